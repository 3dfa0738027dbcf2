"""Who creates which table, in whatever order an app and `registry migrate` run.

The registry's migrations own the registry's tables; the read model's `user` table belongs to
the app's model and is created from it. An app with its own column (`first_name`) that runs
`registry migrate` before its `create_all`, or after it, then writes through the adapter (no
projector running: the drop-in case), reads its own writes with that column, starts
`run_projector`, runs `registry migrate` again, and finally drops its tables with `drop_all`
(nothing of the registry's may depend on them: an app without OAuth gets no `oauth_account`).

It used to fail: `registry migrate` created the default `user` table, the app's `create_all`
then skipped it, and the first write with `first_name` failed with `UndefinedColumnError`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import String, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import registry
from projections import BaseUserTableUUID
from registry import EventSourcedUserDatabase, run_projector
from tests.support.adapter import UserDatabase

REGISTRY = str(Path(sys.executable).with_name("registry"))
PROJECT = Path(registry.__file__).resolve().parents[1]
START_BOUND = 30.0


class AppBase(DeclarativeBase):
    pass


class AppUser(BaseUserTableUUID, AppBase):
    first_name: Mapped[str | None] = mapped_column(String(255), default=None)


async def registry_migrate(database_url: str) -> None:
    """`registry migrate`, the command an operator runs."""
    env = {
        **os.environ,
        "REGISTRY_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])),
    }
    result = await asyncio.to_thread(
        subprocess.run, [REGISTRY, "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def create_all(engine: AsyncEngine) -> None:
    """The app's `create_db_and_tables()`."""
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


@pytest.mark.parametrize("order", ["migrate, then create_all", "create_all, then migrate"])
async def test_registry_migrate_before_or_after_the_apps_create_all(
    database_url: str, order: str
) -> None:
    engine = create_async_engine(database_url)  # the app's own engine, as upstream's docs make it
    try:
        if order.startswith("migrate"):
            await registry_migrate(database_url)
            await create_all(engine)
        else:
            await create_all(engine)
            await registry_migrate(database_url)

        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:  # no projector: the adapter alone
            db = UserDatabase(session, AppUser)
            ada = await db.create(
                {"email": "ada@example.com", "hashed_password": "x", "first_name": "Ada"}
            )
            assert ada.first_name == "Ada"
            ada = await db.update(ada, {"first_name": "Ada L."})
            assert ada.first_name == "Ada L."
        async with sessions() as session:
            got = await EventSourcedUserDatabase(session, AppUser).get(ada.id)
            assert got is not None
            assert got.first_name == "Ada L."

        async with (
            asyncio.timeout(START_BOUND),
            run_projector(engine, AppUser),
            sessions() as session,
        ):
            db = UserDatabase(session, AppUser)
            bob = await db.create(
                {"email": "bob@example.com", "hashed_password": "x", "first_name": "Bob"}
            )
            names = [getattr(await db.get(u.id), "first_name", None) for u in (ada, bob)]
            assert names == ["Ada L.", "Bob"]

        await registry_migrate(database_url)  # again, after all of it: nothing to do
        assert "oauth_account" not in await tables(engine)  # the app has none

        async with engine.begin() as conn:  # the app's own teardown
            await conn.run_sync(AppBase.metadata.drop_all)
        assert "user" not in await tables(engine)
    finally:
        await engine.dispose()
