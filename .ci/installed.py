"""The installed package holds every file the checkout's packages ship (modules, py.typed,
the migrations' *.py, *.mako and *.ini, the console's templates and static files), and
imports from there, not from the checkout.

Run from outside the checkout: python /path/to/.ci/installed.py /path/to/checkout
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SHIPPED = {".py", ".typed", ".mako", ".ini", ".html", ".js", ".css"}

checkout = Path(sys.argv[1]).resolve()
missing = []
for name in ("events", "projections", "registry"):
    installed = Path(importlib.import_module(name).__file__ or "").resolve().parent
    if installed.is_relative_to(checkout):
        raise SystemExit(f"{name} was imported from the checkout ({installed}), not installed")
    source = checkout / name
    shipped = [
        f
        for f in source.rglob("*")
        if f.is_file() and f.suffix in SHIPPED and "__pycache__" not in f.parts
    ]
    missing += [
        str(f.relative_to(checkout))
        for f in shipped
        if not (installed / f.relative_to(source)).exists()
    ]
    print(f"{name}: {len(shipped)} files, installed in {installed}")
if missing:
    raise SystemExit("missing from the installed package: " + ", ".join(sorted(missing)))
