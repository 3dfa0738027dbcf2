"""pytest plugin for the run of upstream's tests (`-p fresh_database`): every test starts on a
database of its own.

Upstream's conftest reads DATABASE_URL once, so the database behind that URL is made anew
before each test: on SQLite, the directory holding the file (and anything kept beside it) is
emptied; on PostgreSQL, the database is dropped and created again (FRESH_DATABASE_ADMIN_URL
names a database to do that from).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import fastapi_users_db_sqlalchemy as shim
import pytest
from sqlalchemy.engine import URL, make_url

from registry import EventSourcedUserDatabase


def pytest_configure() -> None:
    # mypy reads upstream's installed package here; at run time the shim must have won
    found: object = shim.SQLAlchemyUserDatabase
    if found is not EventSourcedUserDatabase:
        raise pytest.UsageError(
            f"fastapi_users_db_sqlalchemy is {shim.__file__}, not the shim: fix PYTHONPATH"
        )


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _recreate(url: URL) -> None:
    admin = await asyncpg.connect(_dsn(make_url(os.environ["FRESH_DATABASE_ADMIN_URL"])))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await admin.close()


@pytest.fixture(autouse=True)
def fresh_database() -> None:
    url = make_url(os.environ["DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        assert url.database
        folder = Path(url.database).parent
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    else:
        asyncio.run(_recreate(url))
