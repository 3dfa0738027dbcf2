"""fastapi-users-db-sqlalchemy 7.0.0, fetched from the package index at test time.

It pins SQLAlchemy < 2.1, so it cannot be installed beside a project on SQLAlchemy 2.1. The
tests get it two ways instead, each made once per test session (or once per machine when
REGISTRY_TEST_CACHE names a directory to keep them in):

- `upstream_tests`: its published sdist unpacked (its own `tests/` and `pyproject.toml` only,
  never its package), to run upstream's test suite against this project's classes;
- `peer_python`: a separate virtual environment with it installed, to write databases the way
  an existing FastAPI Users app wrote them.

Nothing of upstream's is copied into this repository.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PEER = "fastapi-users-db-sqlalchemy==7.0.0"
#: what the peer environment needs beyond the package: the drivers of both backends
PEER_DRIVERS = ("aiosqlite", "asyncpg")
PIP_TIMEOUT = 600


def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("REGISTRY_TEST_CACHE")
    root = Path(configured) if configured else tmp_path_factory.getbasetemp() / "peer-cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One builder at a time (two test sessions may share REGISTRY_TEST_CACHE)."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def built_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(target)` unless a complete one is there already."""
    done = target / ".complete"
    with _exclusive(target.with_name(target.name + ".lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            done.touch()
    return target


def _pip(python: str | Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def upstream_tests(cache: Path) -> Path:
    """A directory holding upstream's `tests/` and `pyproject.toml`, from its sdist."""

    def build(target: Path) -> None:
        download = target / "download"
        _pip(
            sys.executable,
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            PEER,
            "-d",
            str(download),
        )
        [sdist] = download.glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            wanted = [
                member
                for member in archive.getmembers()
                if member.isfile()
                and (
                    member.name.split("/", 1)[-1] == "pyproject.toml"
                    or member.name.split("/", 1)[-1].startswith("tests/")
                )
            ]
            archive.extractall(target / "unpacked", members=wanted, filter="data")
        [root] = (target / "unpacked").iterdir()
        shutil.move(str(root), target / "suite")

    return built_once(cache / "upstream-sdist", build) / "suite"


def peer_python(cache: Path) -> Path:
    """The interpreter of a virtual environment with fastapi-users-db-sqlalchemy installed."""

    def build(target: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, timeout=300)
        _pip(target / "bin" / "python", "install", "--quiet", PEER, *PEER_DRIVERS)

    return built_once(cache / "peer-venv", build) / "bin" / "python"
