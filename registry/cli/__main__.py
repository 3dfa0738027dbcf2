"""`python -m registry.cli`: the `registry` command line."""

from registry.cli.app import main

main()
