"""The master key belongs to the database: the embedded default's key file sits beside the
SQLite file (every process on it, from any directory, uses one key), a database records the
key it was created with, and a process with any other key is refused before it writes
anything, even before the first user exists (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import create_engine
from events.crypto import MasterKey, MasterKeyError, recorded_master_key
from events.keyops import rotate
from projections import OAuthAccount, User
from registry.adapter.projector import run_projector
from registry.schema import ensure_schema
from registry.service.keys import default_key_file, enable, load_keyring
from registry.settings import Settings
from tests.support.keys import settings_for, table_counts

ROOT = Path(__file__).resolve().parents[2]

#: one process: register a user through the adapter's write path with nothing configured but
#: the database URL, then print the user's email as the log opens it (so with the same key)
WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from events import EventStore, create_engine
    from projections import User
    from registry import EventSourcedUserDatabase

    async def main(url, email):
        engine = create_engine(url)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            db = EventSourcedUserDatabase(session, User)
            await db.create({"email": email, "hashed_password": "h"})
            emails = []
            for user in await db.session.scalars(__import__("sqlalchemy").select(User)):
                stream = await EventStore(engine).read_stream(user.id)
                emails.append(stream[0].event.email)
        await engine.dispose()
        print(",".join(sorted(emails)))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def run_writer(url: str, email: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", WRITER, url, email],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_two_processes_in_different_directories_share_the_key_beside_the_file(
    tmp_path: Path,
) -> None:
    data, here, there = tmp_path / "data", tmp_path / "app", tmp_path / "service"
    for d in (data, here, there):
        d.mkdir()
    url = f"sqlite+aiosqlite:///{data / 'registry.db'}"
    first = run_writer(url, "ann@example.com", here)
    assert first.returncode == 0, first.stderr
    second = run_writer(url, "bea@example.com", there)
    assert second.returncode == 0, second.stderr
    # the second process opened the first one's sealed email: the same key
    assert second.stdout.strip() == "ann@example.com,bea@example.com"
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith("registry.db-")) == [
        "registry.db",
        "registry.key",
    ]
    # nothing in either cwd
    assert os.listdir(here) == []
    assert os.listdir(there) == []


def test_the_key_file_is_decided_by_the_engine_not_the_default_url(tmp_path: Path) -> None:
    assert default_key_file("sqlite+aiosqlite:///./registry.db") == Path("registry.key")
    assert default_key_file(f"sqlite+aiosqlite:///{tmp_path}/app.sqlite3") == tmp_path / "app.key"
    assert default_key_file("sqlite+aiosqlite://") is None
    assert default_key_file("postgresql+asyncpg://h/db") is None
    settings = Settings(master_key=None)  # the database URL left at its SQLite default
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY is not set"):
            load_keyring(settings, url="postgresql+asyncpg://h/db")
    finally:
        os.chdir(cwd)
    assert os.listdir(tmp_path) == []  # no key generated for a PostgreSQL engine


async def test_a_database_refuses_another_key_before_its_first_user(
    engine: AsyncEngine, database_url: str
) -> None:
    good, wrong = MasterKey.generate(), MasterKey.generate()
    await enable(engine, settings_for(database_url, good))
    await ensure_schema(engine, User, OAuthAccount)  # the schema, no user yet
    async with engine.connect() as conn:
        assert await recorded_master_key(conn) == good.key_id
    before = await table_counts(engine)
    assert before["events"] == 0
    assert before["event_data_keys"] == 0

    other = create_engine(database_url)
    try:
        with pytest.raises(MasterKeyError, match=f"belongs to master key {good.key_id}"):
            await enable(other, settings_for(database_url, wrong))
        with pytest.raises(MasterKeyError, match=good.key_id):
            async with run_projector(other, User, settings=settings_for(database_url, wrong)):
                pass
    finally:
        await other.dispose()
    assert await table_counts(engine) == before  # nothing written


async def test_the_first_key_to_create_the_schema_wins_and_the_other_changes_nothing(
    database_url: str,
) -> None:
    first, second = MasterKey.generate(), MasterKey.generate()
    a, b = create_engine(database_url), create_engine(database_url)
    try:
        await enable(a, settings_for(database_url, first))
        await enable(b, settings_for(database_url, second))  # no schema yet: nothing to check
        await ensure_schema(a, User)
        with pytest.raises(MasterKeyError, match=first.key_id):
            await ensure_schema(b, User)
        async with a.connect() as conn:
            assert await recorded_master_key(conn) == first.key_id
    finally:
        await a.dispose()
        await b.dispose()


async def test_a_rotation_moves_the_database_to_the_new_key(
    engine: AsyncEngine, database_url: str
) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    await enable(engine, settings_for(database_url, old))
    await ensure_schema(engine, User)
    rotating = settings_for(database_url, new, (old,))
    result = await rotate(engine, load_keyring(rotating))
    assert result.key_id == new.key_id
    async with engine.connect() as conn:
        assert await recorded_master_key(conn) == new.key_id
        assert (await conn.execute(select(1))).scalar() == 1
    stale = create_engine(database_url)
    try:
        with pytest.raises(MasterKeyError, match=new.key_id):
            await enable(stale, settings_for(database_url, old))
    finally:
        await stale.dispose()
