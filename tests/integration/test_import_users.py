"""`registry import-users`: a database written by fastapi-users-db-sqlalchemy itself moves into
the log through the command handlers, and the example app then logs its users in with their
old passwords. Re-running imports nothing twice.

fastapi-users-db-sqlalchemy pins SQLAlchemy < 2.1, so the old app's database is written in a
separate environment made at test time (old_fastapi_users_app.py, run by `peer_python`), in
whatever environment these tests run."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from events import create_engine
from events.tables import events
from examples.fastapi_users_app import User, create_app
from registry.cli import main
from registry.settings import get_settings
from tests.support.upstream import cache_root
from tests.support.upstream import peer_python as make_peer_python
from tests.support.waiting import eventually

#: making the separate environment (pip) on a loaded machine
pytestmark = pytest.mark.timeout(900)

OLD_APP = Path(__file__).with_name("old_fastapi_users_app.py")


@dataclass(frozen=True)
class OldUserRow:
    id: uuid.UUID
    email: str
    password: str
    first_name: str | None
    is_verified: bool
    is_superuser: bool
    oauth: tuple[tuple[str, str], ...]  # (oauth_name, account_id)


#: sorts after every uuid4 (the import goes in id order), so the original Dora wins
LAST_ID = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")


@pytest.fixture(scope="session")
def peer_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of an environment with fastapi-users-db-sqlalchemy (SQLAlchemy 2.0)."""
    return make_peer_python(cache_root(tmp_path_factory))


async def old_app(python: Path, *args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(python), str(OLD_APP), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def write_old_database(python: Path, url: str) -> list[OldUserRow]:
    """Users written the way an existing FastAPI Users app wrote them: SQLAlchemyUserDatabase."""
    return [
        OldUserRow(
            uuid.UUID(row["id"]),
            row["email"],
            row["password"],
            row["first_name"],
            row["is_verified"],
            row["is_superuser"],
            tuple((name, account) for name, account in row["oauth"]),
        )
        for row in json.loads(await old_app(python, "write", url))
    ]


def invoke(*args: str, database_url: str, **env: str) -> Result:
    """`registry ...` (run in a thread: the command runs its own event loop)."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            main,
            list(args),
            env={"REGISTRY_DATABASE_URL": database_url, **env},
            catch_exceptions=False,
        )
    finally:
        get_settings.cache_clear()


async def import_cli(source: str, target: str) -> dict[str, object]:
    result = await asyncio.to_thread(
        invoke, "import-users", "--from", source, "--json", database_url=target
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


async def log_rows(target: str) -> list[tuple[str, uuid.UUID, dict[str, Any]]]:
    engine = create_engine(target)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(events.c.event_type, events.c.stream_id, events.c.metadata).order_by(
                    events.c.position
                )
            )
            return [(t, s, m) for t, s, m in rows]
    finally:
        await engine.dispose()


@pytest.fixture
async def old_sqlite(peer_python: Path, tmp_path: Path) -> tuple[str, list[OldUserRow]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old_app.db'}"
    return url, await write_old_database(peer_python, url)


async def log_in(client: httpx.AsyncClient, row: OldUserRow) -> httpx.Response | None:
    """The login's response once it succeeds."""
    response = await client.post(
        "/auth/jwt/login", data={"username": row.email.lower(), "password": row.password}
    )
    return response if response.status_code == 200 else None


async def check_app_logs_them_in(target: str, old: list[OldUserRow]) -> None:
    app = create_app(target, secret="import-test-secret-of-at-least-32-bytes")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for row in old:
                # the in-process projector catches up with the imported log
                response = await eventually(
                    functools.partial(log_in, client, row),
                    timeout=15,
                    message=f"{row.email} to log in",
                )
                assert response.status_code == 200, (row.email, response.text)
                auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
                me = (await client.get("/users/me", headers=auth)).json()
                assert me["id"] == str(row.id)
                assert me["email"] == row.email.lower()  # stored in the canonical form
                assert me["first_name"] == row.first_name
                assert (me["is_verified"], me["is_superuser"]) == (
                    row.is_verified,
                    row.is_superuser,
                )
                bad = await client.post(
                    "/auth/jwt/login", data={"username": row.email, "password": "not it"}
                )
                assert bad.status_code == 400
        async with app.state.session_maker() as session:
            for row in old:
                user = await session.get(User, row.id)
                assert user is not None
                assert user.email == row.email.lower()  # the canonical form (events.emails)
                linked = {(a.oauth_name, a.account_id) for a in user.oauth_accounts}
                assert linked == set(row.oauth)
                assert all(a.access_token.startswith("secret-access-") for a in user.oauth_accounts)


async def test_import_then_old_passwords_log_in_and_rerun_imports_nothing(
    old_sqlite: tuple[str, list[OldUserRow]], database_url: str
) -> None:
    source, old = old_sqlite
    n_oauth = sum(len(r.oauth) for r in old)

    summary = await import_cli(source, database_url)
    assert summary["users"] == {"total": 3, "imported": 3, "already": 0, "failed": 0}
    assert summary["oauth_accounts"] == {
        "total": n_oauth,
        "imported": n_oauth,
        "already": 0,
        "failed": 0,
    }
    assert summary["profile_columns"] == ["first_name"]
    assert summary["failures"] == []

    log = await log_rows(database_url)
    assert sorted(t for t, _, _ in log) == sorted(
        ["UserRegistered"] * 3 + ["OAuthAccountLinked"] * n_oauth
    )
    assert {s for t, s, _ in log if t == "UserRegistered"} == {r.id for r in old}
    assert all(m.get("imported") is True and m["command_id"].startswith("import:") for *_, m in log)

    again = await import_cli(source, database_url)
    assert again["users"] == {"total": 3, "imported": 0, "already": 3, "failed": 0}
    assert again["oauth_accounts"]["already"] == n_oauth  # type: ignore[index]  # the import summary's nested counts
    assert await log_rows(database_url) == log

    await check_app_logs_them_in(database_url, old)


async def test_import_from_postgresql_source(
    peer_python: Path, pg_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL source (native UUID columns) into a SQLite registry."""
    old = await write_old_database(peer_python, pg_url)
    target = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    # the app's model named: its custom columns are the profile the import may carry
    result = await asyncio.to_thread(
        invoke,
        "import-users",
        "--from",
        pg_url,
        database_url=target,
        REGISTRY_USER_MODEL="examples.fastapi_users_app:User",
        REGISTRY_OAUTH_MODEL="examples.fastapi_users_app:OAuthAccount",
    )
    assert result.exit_code == 0, result.output
    assert "users: 3 imported, 0 already imported, 0 refused (of 3)" in result.stdout
    assert "oauth accounts: 3 imported" in result.stdout
    assert "user: 3/3" in result.stderr
    assert "oauth_account: 3/3" in result.stderr
    await check_app_logs_them_in(target, old)


async def test_rows_the_registry_refuses_are_reported_and_the_rest_imported(
    peer_python: Path, tmp_path: Path, database_url: str
) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'dupes.db'}"
    old = await write_old_database(peer_python, source)
    # upstream's unique index is case-sensitive: a second "DORA@…" row can exist there
    await old_app(peer_python, "add", source, str(LAST_ID), "DORA@example.com")

    result = await asyncio.to_thread(
        invoke, "import-users", "--from", source, "--json", database_url=database_url
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["users"]["imported"] == 3
    assert summary["users"]["failed"] == 1
    [failure] = summary["failures"]
    assert (failure["id"], failure["code"]) == (str(LAST_ID), "EMAIL_ALREADY_REGISTERED")
    assert len([r for r in await log_rows(database_url) if r[0] == "UserRegistered"]) == len(old)


async def test_the_email_rule_applies_to_imported_rows(
    peer_python: Path, tmp_path: Path, database_url: str
) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'hostile.db'}"
    await write_old_database(peer_python, source)
    nfc, nfd = (unicodedata.normalize(form, "José@Example.com") for form in ("NFC", "NFD"))
    rows = {  # upstream's unique index compares exact strings: all of these can exist there
        uuid.UUID("eeeeeeee-0000-4000-8000-000000000001"): nfc,
        uuid.UUID("eeeeeeee-0000-4000-8000-000000000002"): nfd,  # one address with the first
        uuid.UUID("eeeeeeee-0000-4000-8000-000000000003"): "p\u0430ypal@example.com",
    }
    await old_app(peer_python, "add", source, *(v for pair in rows.items() for v in map(str, pair)))

    result = await asyncio.to_thread(
        invoke, "import-users", "--from", source, "--json", database_url=database_url
    )
    summary = json.loads(result.stdout)
    failed = {f["id"]: f["code"] for f in summary["failures"]}
    ids = list(rows)
    assert failed == {
        str(ids[1]): "EMAIL_ALREADY_REGISTERED",
        str(ids[2]): "INVALID_COMMAND",
    }, summary["failures"]
    registered = [r for r in await log_rows(database_url) if r[0] == "UserRegistered"]
    assert ids[0] in {r[1] for r in registered}


async def test_missing_user_table_or_file_is_a_clear_error(
    tmp_path: Path, database_url: str
) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}"
    result = await asyncio.to_thread(
        invoke, "import-users", "--from", missing, database_url=database_url
    )
    assert result.exit_code == 1
    assert "no SQLite database at" in result.stderr
    assert not (tmp_path / "missing.db").exists()

    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    engine = create_async_engine(other)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY)"))
    await engine.dispose()
    result = await asyncio.to_thread(
        invoke, "import-users", "--from", other, database_url=database_url
    )
    assert result.exit_code == 1
    assert "no 'user' table" in result.stderr
