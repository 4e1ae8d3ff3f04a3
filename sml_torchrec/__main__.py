from sml_torchrec.cli import main

raise SystemExit(main())
