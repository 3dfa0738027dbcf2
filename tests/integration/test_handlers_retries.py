"""The write path retries only real conflicts (a moved stream, the command_id race, SQLSTATE
40P01/40001); every other error surfaces as itself, with its cause, after one attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from events import EventStore, RecordedEvent, create_engine
from events.tables import metadata as events_metadata
from projections import BaseUserTableUUID, UserProjection
from projections.tables import metadata as projections_metadata
from registry import EventSourcedUserDatabase, run_projector
from registry.domain.commands import RegisterUser, UpdateUser
from registry.service.handlers import CommandHandlers
from registry.service.retry import retryable_sqlstate, sqlstate
from registry.settings import Settings
from registry.tables import metadata as registry_metadata
from tests.support.store import count_events


class Base(DeclarativeBase):
    pass


class StrictUser(BaseUserTableUUID, Base):
    """An app model with a NOT NULL custom column and no default."""

    __tablename__ = "strict_user"
    nickname: Mapped[str] = mapped_column(String(50))


async def create_tables(engine: AsyncEngine, *models: type[DeclarativeBase]) -> None:
    async with engine.begin() as conn:
        for metadata in (events_metadata, registry_metadata, projections_metadata):
            await conn.run_sync(metadata.create_all)
        for model in models:
            await conn.run_sync(model.metadata.create_all)


async def test_a_not_null_column_without_default_names_itself(engine: AsyncEngine) -> None:
    """Used to be retried 30 times and reported as `VersionConflictError: user ... kept
    changing; gave up after 30 attempts`, the cause dropped."""
    await create_tables(engine, Base)
    store = EventStore(engine)
    handlers = CommandHandlers(
        engine,
        store,
        profile_fields=frozenset({"nickname"}),
        own_projection=UserProjection(StrictUser),
    )
    with pytest.raises(IntegrityError, match="nickname") as caught:
        await asyncio.wait_for(
            handlers.handle(RegisterUser(email="a@x.io", hashed_password="h", command_id="c")),
            20,
        )
    assert caught.value.orig is not None  # the driver's error, as raised
    assert await count_events(engine) == 0  # the append rolled back with it
    # and the same app writes fine once the column is given
    out = await handlers.handle(
        RegisterUser(email="a@x.io", hashed_password="h", profile={"nickname": "ann"})
    )
    assert out.projected
    assert await count_events(engine) == 1


async def test_an_unexpected_integrity_error_is_not_retried(engine: AsyncEngine) -> None:
    """Any IntegrityError that is not ours to resolve (here a NOT NULL column of another table
    written in the same transaction) surfaces after ONE attempt."""
    await create_tables(engine)
    side = Table("side_rows", MetaData(), Column("v", Integer, nullable=False))
    async with engine.begin() as conn:
        await conn.run_sync(side.metadata.create_all)
    attempts = 0

    class Failing:
        async def apply_own(
            self, conn: AsyncConnection, _recorded: Sequence[RecordedEvent], _after_version: int
        ) -> bool:
            nonlocal attempts
            attempts += 1
            await conn.execute(insert(side).values(v=None))
            return True

    handlers = CommandHandlers(engine, EventStore(engine), own_projection=Failing())
    with pytest.raises(IntegrityError):
        await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h"))
    assert attempts == 1
    assert await count_events(engine) == 0


class RaisesOnce:
    """Raises a real PostgreSQL error with `sqlstate` in the command's transaction, once."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.n = 0

    async def apply_own(
        self, conn: AsyncConnection, _recorded: Sequence[RecordedEvent], _after_version: int
    ) -> bool:
        self.n += 1
        if self.n == 1:
            await conn.execute(
                text(
                    f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{self.state}'; END $$"
                )
            )
        return False


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    try:
        await create_tables(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("state", ["40P01", "40001"])
async def test_deadlock_and_serialization_victims_are_decided_again(
    pg_engine: AsyncEngine, state: str
) -> None:
    """SQLSTATE, not the message: PostgreSQL's text is localised (lc_messages)."""
    own = RaisesOnce(state)
    handlers = CommandHandlers(pg_engine, EventStore(pg_engine), own_projection=own)
    out = await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h"))
    assert own.n == 2
    assert out.version == 1
    assert await count_events(pg_engine) == 1
    # with an expected version stated, too: deciding again re-checks it
    upd = RaisesOnce(state)
    handlers = CommandHandlers(pg_engine, EventStore(pg_engine), own_projection=upd)
    out = await handlers.handle(
        UpdateUser(user_id=out.user_id, is_active=False, expected_version=1)
    )
    assert upd.n == 2
    assert out.version == 2


@pytest.mark.parametrize("state", ["23502", "P0001", "40003"])
async def test_other_database_errors_surface_as_themselves(
    pg_engine: AsyncEngine, state: str
) -> None:
    own = RaisesOnce(state)
    handlers = CommandHandlers(pg_engine, EventStore(pg_engine), own_projection=own)
    with pytest.raises(DBAPIError, match="injected") as caught:
        await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h"))
    assert own.n == 1
    assert sqlstate(caught.value) == state
    assert await count_events(pg_engine) == 0


async def test_sqlstate_of_a_real_deadlock(pg_engine: AsyncEngine) -> None:
    """Two transactions locking two rows in opposite orders: PostgreSQL aborts one with
    40P01, read through SQLAlchemy's wrapper on either SQLAlchemy line; never from the text."""
    rows = Table("lock_rows", MetaData(), Column("id", Integer, primary_key=True))
    async with pg_engine.begin() as conn:
        await conn.run_sync(rows.metadata.create_all)
        await conn.execute(insert(rows), [{"id": 1}, {"id": 2}])
    both_locked = asyncio.Barrier(2)

    async def lock(first: int, second: int) -> BaseException | None:
        try:
            async with pg_engine.begin() as conn:
                await conn.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
                await conn.execute(update(rows).where(rows.c.id == first).values(id=first))
                await both_locked.wait()
                await conn.execute(update(rows).where(rows.c.id == second).values(id=second))
        except DBAPIError as exc:
            return exc
        return None

    results = await asyncio.wait_for(asyncio.gather(lock(1, 2), lock(2, 1)), 20)
    failed = [r for r in results if r is not None]
    assert len(failed) == 1
    assert sqlstate(failed[0]) == "40P01"
    assert retryable_sqlstate(failed[0]) == "40P01"
    assert retryable_sqlstate(ValueError("deadlock")) is None  # the message does not count


async def test_through_the_adapter_the_missing_column_names_itself(
    engine: AsyncEngine, database_url: str
) -> None:
    """FastAPI Users' create without the app's NOT NULL column: the adapter's own write (the
    fast path projects it in the append's transaction) fails at once, naming the column."""

    settings = Settings(database_url=database_url)
    async with (
        run_projector(engine, StrictUser, settings=settings),
        async_sessionmaker(engine)() as session,
    ):
        db: EventSourcedUserDatabase[Any, Any] = EventSourcedUserDatabase(session, StrictUser)
        with pytest.raises(IntegrityError, match="nickname"):
            await asyncio.wait_for(db.create({"email": "a@x.io", "hashed_password": "h"}), 20)
        user = await db.create({"email": "a@x.io", "hashed_password": "h", "nickname": "ann"})
        assert user.nickname == "ann"
    assert await count_events(engine) == 1
