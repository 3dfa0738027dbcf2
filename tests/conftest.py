"""Shared fixtures: every store and projection test runs on SQLite and on PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (override with REGISTRY_TEST_PG_URL). Each test
session gets its own database, and each test starts from an empty schema. A missing server is
a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from events import create_engine
from events.crypto import MasterKey

PG_BASE_URL = os.environ.get(
    "REGISTRY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]

#: every process of the test session (e2e `registry serve`/`worker` on PostgreSQL included)
#: has a master key; tests of a missing or wrong one change their own environment
TEST_MASTER_KEY = os.environ.setdefault("REGISTRY_MASTER_KEY", MasterKey.generate().encoded())


def _admin_dsn() -> str:
    return make_url(PG_BASE_URL).set(drivername="postgresql").render_as_string(False)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test session's own; its SQLAlchemy URL."""
    name = f"registry_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_admin_dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_BASE_URL).set(database=name).render_as_string(False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_pg(url: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend: a SQLite file, or a wiped PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("pg_database")
        asyncio.run(_reset_pg(url))
        yield url


@pytest.fixture
def backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """PostgreSQL only, empty schema."""
    asyncio.run(_reset_pg(pg_database))
    return pg_database
