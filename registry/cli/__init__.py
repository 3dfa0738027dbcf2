"""The `registry` command line: one module per command family, `app.main` the group.

Each command parses its options, calls one operation and shapes the output; errors go to
stderr with a non-zero exit code, and `--json` prints data for machines.
"""

from registry.cli.app import main

__all__ = ["main"]
