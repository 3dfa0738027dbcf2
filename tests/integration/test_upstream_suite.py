"""fastapi-users-db-sqlalchemy 7.0.0's own `tests/test_users.py`, run as published against
this project.

The sdist comes from the package index at test time (tests/support/upstream.py). A shim of our
own (tests/upstream_shim) is first on the path: its `fastapi_users_db_sqlalchemy` only gives
upstream's names to `projections.BaseUserTableUUID`, `projections.BaseOAuthAccountTableUUID`
and `registry.EventSourcedUserDatabase`. Upstream's fixtures create the tables with
`Base.metadata.create_all`, use the adapter on a session of a plain `create_async_engine`, run
no projector, and `drop_all` at the end; each test gets a database of its own, on SQLite and
on PostgreSQL.

Every assertion holds except one: `test_insert_existing_email` expects the database's
`IntegrityError` for a duplicate email and gets `fastapi_users.exceptions.UserAlreadyExists`,
the documented improvement. That test must fail in exactly that way.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import registry
from tests.conftest import PG_BASE_URL, TEST_MASTER_KEY
from tests.support.upstream import cache_root, upstream_tests

#: the pip download and the nested pytest run, on a loaded machine
pytestmark = pytest.mark.timeout(900)

SHIM = Path(__file__).resolve().parents[1] / "upstream_shim"
#: the project under test as this process imports it (the checkout, or the installed package)
PROJECT = Path(registry.__file__).resolve().parents[1]
IMPROVED = "test_insert_existing_email"
RUN_TIMEOUT = 600


@dataclass(frozen=True)
class Outcome:
    result: str  # passed, failed, error, skipped
    message: str
    text: str


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return upstream_tests(cache_root(tmp_path_factory))


def upstream_test_names(suite: Path) -> set[str]:
    tree = ast.parse((suite / "tests" / "test_users.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
        and node.name.startswith("test_")
    }


def outcomes(junit: Path) -> dict[str, Outcome]:
    found = {}
    for case in ET.parse(junit).iter("testcase"):
        result, message, text = "passed", "", ""
        for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(kind)
            if element is not None:
                result, message, text = name, element.get("message", ""), element.text or ""
                break
        found[case.get("name", "")] = Outcome(result, message, text)
    return found


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(
        make_url(PG_BASE_URL).set(drivername="postgresql").render_as_string(False)
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_upstream(
    suite: Path, workdir: Path, database_url: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """pytest on upstream's tests/test_users.py in a copy of its tree, the shim first."""
    run = workdir / "upstream"
    shutil.copytree(suite, run, ignore=shutil.ignore_patterns(".complete"))
    junit = workdir / "junit.xml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "PYTEST_"))}
    clean["PYTHONPATH"] = os.pathsep.join(
        [str(SHIM), str(PROJECT), *filter(None, [clean.get("PYTHONPATH")])]
    )
    clean.update(DATABASE_URL=database_url, **env)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_users.py",
            "-p",
            "fresh_database",
            "-p",
            "no:cacheprovider",
            "--timeout=120",
            f"--junitxml={junit}",
            "-rA",
        ],
        cwd=run,
        env=clean,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return proc, junit


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upstream_test_users_passes_but_for_the_documented_improvement(
    suite: Path, tmp_path: Path, backend: str
) -> None:
    if backend == "sqlite":
        # nothing configured: the embedded default, as upstream's tests run it
        url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test-sqlalchemy-user.db'}"
        env: dict[str, str] = {}
    else:
        name = f"upstream_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        url = make_url(PG_BASE_URL).set(database=name).render_as_string(False)
        env = {"FRESH_DATABASE_ADMIN_URL": PG_BASE_URL, "REGISTRY_MASTER_KEY": TEST_MASTER_KEY}
    try:
        proc, junit = run_upstream(suite, tmp_path, url, **env)
    finally:
        if backend == "postgresql":
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    report = f"upstream's pytest output:\n{proc.stdout}\n{proc.stderr}"
    assert junit.exists(), report

    got = outcomes(junit)
    expected = upstream_test_names(suite)
    assert expected == {
        "test_queries",
        IMPROVED,
        "test_queries_custom_fields",
        "test_queries_oauth",
    }
    assert set(got) == expected, report
    others = {name: o.result for name, o in got.items() if name != IMPROVED}
    assert others == dict.fromkeys(others, "passed"), report

    improved = got[IMPROVED]
    assert improved.result == "failed", report
    assert improved.message.startswith("fastapi_users.exceptions.UserAlreadyExists"), report
    # raised by the second create, inside `pytest.raises(exc.IntegrityError)`, not the first
    second_create = (
        r"with pytest\.raises\(exc\.IntegrityError\):\n"
        r">\s+await sqlalchemy_user_db\.create\(user_create\)"
    )
    assert re.search(second_create, improved.text), report
    assert proc.returncode == 1, report  # pytest: some tests failed (that one)
    if backend == "sqlite":
        # the master key generated for the SQLite file is kept with it, not where we ran
        assert not list((tmp_path / "upstream").glob("*.key")), report
