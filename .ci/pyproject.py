"""What .ci/run reads from pyproject.toml, so that each list lives in one place.

python .ci/pyproject.py extra NAME      an extra's requirements, one a line
python .ci/pyproject.py floor PACKAGE   the lowest version the dependencies allow for PACKAGE
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def floor(package: str) -> str:
    for requirement in PROJECT["dependencies"]:
        name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
        if name.lower() == package.lower():
            found = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
            if found:
                return found.group(1)
            raise SystemExit(f"{requirement!r} states no lower bound")
    raise SystemExit(f"{package} is not a dependency")


match sys.argv[1:]:
    case ["extra", name]:
        print("\n".join(PROJECT["optional-dependencies"][name]))
    case ["floor", package]:
        print(floor(package))
    case _:
        raise SystemExit(__doc__)
