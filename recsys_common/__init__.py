"""What both products (``sml_torchrec`` and ``catn``) share: user errors and exit codes,
launching ranks and joining process groups, reading input files, guarding output directories,
and command-line argument types. It imports neither product."""
