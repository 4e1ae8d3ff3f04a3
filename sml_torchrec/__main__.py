from sml_torchrec.cli import main

main()
