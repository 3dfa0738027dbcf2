"""Schema ownership, on SQLite and PostgreSQL: the registry's migrations own the registry's
tables; the read model belongs to the app's models and is made from them in whatever order
the app's `create_all`, `run_projector` and `registry migrate` run; a failed start changes
nothing, releases its lock and reports its own cause."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import String, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from events import create_engine
from projections import BaseUserTableUUID
from projections import User as DefaultUser
from registry import run_projector
from registry.schema import SchemaError, ensure_schema, migrate
from registry.settings import Settings
from tests.support.adapter import UserDatabase


class AppBase(DeclarativeBase):
    pass


class AppUser(BaseUserTableUUID, AppBase):
    """An app's model as the FastAPI Users docs write it: no OAuth, one column of its own."""

    first_name: Mapped[str | None] = mapped_column(String(255), default=None)


class StrictBase(DeclarativeBase):
    pass


class StrictUser(BaseUserTableUUID, StrictBase):
    """A column that cannot be added to an existing table without the operator."""

    tenant: Mapped[str] = mapped_column(String(50), nullable=False)


async def names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def columns(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        found = await conn.run_sync(lambda c: inspect(c).get_columns(table))
    return {c["name"] for c in found}


async def write_and_read(engine: AsyncEngine, email: str) -> None:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        db = UserDatabase(session, AppUser)
        user = await db.create({"email": email, "hashed_password": "h", "first_name": "Ann"})
        user = await db.update(user, {"first_name": "Bea"})
        again = await db.get(user.id)
        assert again is not None
        assert again.first_name == "Bea"


async def test_the_docs_layout_starts_and_restarts(database_url: str) -> None:
    """`create_db_and_tables()` (the app's create_all) first, then `run_projector`, twice."""
    settings = Settings(database_url=database_url)
    for attempt in range(2):
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(AppBase.metadata.create_all)
            async with run_projector(engine, AppUser, settings=settings):
                await write_and_read(engine, f"ann{attempt}@example.com")
        finally:
            await engine.dispose()
    engine = create_engine(database_url)
    try:
        tables = await names(engine)
        assert "oauth_account" not in tables  # the app has no OAuth model
        assert {"events", "alembic_version", "user"} <= tables
        async with engine.begin() as conn:  # the app's drop_all is not blocked by the registry
            await conn.run_sync(AppBase.metadata.drop_all)
        assert "user" not in await names(engine)
        assert "events" in await names(engine)
    finally:
        await engine.dispose()


async def test_registry_migrate_before_the_apps_create_all(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert "user" not in await names(engine)  # Alembic makes no read-model table
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    await write_and_read(engine, "ann@example.com")


async def test_a_table_made_from_another_model_gets_the_apps_nullable_column(
    engine: AsyncEngine,
) -> None:
    """`registry migrate` and a worker with the default model first (it makes `user` without
    first_name), the app's create_all then skips the table: the adapter's first use adds the
    column before it writes."""
    await migrate(engine)
    await ensure_schema(engine, DefaultUser)
    assert "first_name" not in await columns(engine, "user")
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)  # skips the existing table
    await write_and_read(engine, "ann@example.com")
    assert "first_name" in await columns(engine, "user")


async def test_a_missing_not_null_column_stops_start_up_naming_it_and_changes_nothing(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    before = await names(engine)
    with pytest.raises(SchemaError) as caught:
        await ensure_schema(engine, StrictUser)
    message = str(caught.value)
    assert "'user'" in message
    assert "'tenant'" in message
    assert "registry replay" in message
    assert await names(engine) == before  # the registry's tables were rolled back with it
    assert "tenant" not in await columns(engine, "user")


async def test_a_failed_start_releases_its_lock_and_the_next_start_works(
    engine: AsyncEngine, database_url: str
) -> None:
    """A start that fails (here: the NOT NULL column) must not keep the schema lock on a
    pooled connection: the next start in the same process, and one in another engine, go
    through in bounded time."""
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    for _ in range(2):
        with pytest.raises(SchemaError):
            await asyncio.wait_for(ensure_schema(engine, StrictUser), 30)
    await asyncio.wait_for(ensure_schema(engine, AppUser), 30)
    other = create_engine(database_url)
    try:
        await asyncio.wait_for(ensure_schema(other, AppUser), 30)
    finally:
        await other.dispose()
    assert {"events", "event_master_key", "user"} <= await names(engine)


async def test_a_failed_migration_leaves_nothing_half_made(engine: AsyncEngine) -> None:
    """The SQLite driver would run DDL outside a transaction: a migration that fails half-way
    must still roll back whole, so the next start reports no misleading 'already exists'."""
    async with engine.begin() as conn:  # a table in the way of migration 0002's third table
        await conn.execute(text("CREATE TABLE projection_tombstones (x INTEGER)"))
    with pytest.raises(Exception, match="projection_tombstones") as caught:
        await migrate(engine)
    assert "already exists" in str(caught.value)
    assert await names(engine) == {"projection_tombstones"}  # 0001's events rolled back too
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE projection_tombstones"))
    await migrate(engine)
    assert {"events", "projection_tombstones"} <= await names(engine)


async def test_concurrent_starts_on_a_new_database_all_succeed(database_url: str) -> None:
    engines = [create_engine(database_url) for _ in range(8)]
    try:
        await asyncio.gather(*(ensure_schema(e, AppUser) for e in engines))
        await write_and_read(engines[0], f"{uuid.uuid4().hex[:8]}@example.com")
    finally:
        for e in engines:
            await e.dispose()
