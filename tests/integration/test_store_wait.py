"""Waiting for new events: an in-process signal on both backends, LISTEN/NOTIFY across
processes on PostgreSQL, the slow poll as the fallback; and what an append costs in
statements."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import AdaptedConnection, Connection
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from events import EventStore, UserRegistered, UserVerified, create_engine
from tests.support.store import HASH, open_store


@pytest.fixture
async def store(engine: AsyncEngine) -> EventStore:
    return await open_store(engine)


def registered() -> list[UserRegistered]:
    return [UserRegistered(email="wait@example.com", hashed_password=HASH)]


async def waiting(store: EventStore, timeout: float) -> asyncio.Task[bool]:
    """A task blocked in `wait_for_events` (it has taken its place before this returns)."""
    task = asyncio.create_task(store.wait_for_events(timeout))
    await asyncio.sleep(0)  # one turn of the loop: the task is now waiting on the signal
    assert not task.done()
    return task


async def test_an_in_process_append_wakes_waiters_at_once(store: EventStore) -> None:
    same_engine = EventStore(store.engine)  # e.g. an in-process projector's own store
    waiters = [await waiting(store, 30), await waiting(same_engine, 30)]
    started = time.monotonic()
    await store.append(uuid.uuid4(), registered(), expected_version=0)
    woken = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    elapsed = time.monotonic() - started
    assert woken == [True, True], "woken by the signal, not by the slow poll"
    assert elapsed < store.slow_poll / 2, f"{elapsed:.3f}s"


async def test_an_append_in_the_callers_transaction_wakes_on_committed(
    store: EventStore,
) -> None:
    waiter = await waiting(store, 30)
    async with store.engine.begin() as conn:
        await store.append(uuid.uuid4(), registered(), expected_version=0, conn=conn)
        await asyncio.sleep(0)
        assert not waiter.done(), "not before the transaction commits"
    store.committed()
    assert await asyncio.wait_for(waiter, 5) is True


async def test_without_a_signal_the_wait_is_bounded_by_the_slow_poll(
    store: EventStore, database_url: str
) -> None:
    started = time.monotonic()
    assert await store.wait_for_events(0.05) is False
    assert time.monotonic() - started < 1
    # a writer on another engine (another process) sends no in-process signal
    other = create_engine(database_url)
    try:
        waiter = await waiting(store, 30)
        await EventStore(other).append(uuid.uuid4(), registered(), expected_version=0)
        started = time.monotonic()
        assert await asyncio.wait_for(waiter, 10) is False
        assert time.monotonic() - started < store.slow_poll + 1
    finally:
        await other.dispose()


async def test_listening_wakes_on_an_append_from_another_process(pg_url: str) -> None:
    reader_engine, writer_engine = create_engine(pg_url), create_engine(pg_url)
    try:
        reader = await open_store(reader_engine)
        writer = EventStore(writer_engine)  # another engine: no shared in-process signal
        async with reader.listening():
            for n in range(3):
                waiter = await waiting(reader, 30)
                started = time.monotonic()
                sid = uuid.uuid4()
                await writer.append(sid, registered(), expected_version=0)
                assert await asyncio.wait_for(waiter, 10) is True, "woken by NOTIFY"
                elapsed = time.monotonic() - started
                assert elapsed < reader.slow_poll / 4, f"append {n}: {elapsed:.3f}s"
                # a commit in the writer's own transaction notifies too
                waiter = await waiting(reader, 30)
                async with writer_engine.begin() as conn:
                    await writer.append(sid, [UserVerified()], expected_version=1, conn=conn)
                assert await asyncio.wait_for(waiter, 10) is True
    finally:
        await reader_engine.dispose()
        await writer_engine.dispose()


# ---------------------------------------------------------------- statements per append
@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[EventStore, list[str]]]:
    """A store whose engine records every statement sent, BEGIN and COMMIT included (no
    pool pre-ping, which would add its own)."""
    sent: list[str] = []
    engine = create_engine(database_url, pool_pre_ping=False)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def statement(_c: Connection, _cur: DBAPICursor, sql: str, *_a: object) -> None:
        sent.append(sql.split()[0].upper())

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: AdaptedConnection, _record: ConnectionPoolEntry) -> None:
        if engine.dialect.name == "postgresql":  # asyncpg logs BEGIN/COMMIT/ROLLBACK
            dbapi_conn.driver_connection.add_query_logger(
                lambda q: sent.append(q.query.strip(" ;").upper())
            )

    try:
        store = await open_store(engine)
        yield store, sent
    finally:
        await engine.dispose()


async def test_an_append_is_one_statement(
    counted: tuple[EventStore, list[str]], backend: str
) -> None:
    store, sent = counted
    sid = uuid.uuid4()
    await store.append(uuid.uuid4(), registered(), expected_version=0)  # warm the pool
    sent.clear()
    await store.append(sid, registered(), expected_version=0)
    assert sent == ["INSERT"]
    sent.clear()
    await store.append(sid, [UserVerified(), UserVerified()], expected_version=1)
    if backend == "postgresql":
        assert sent == ["INSERT"], "one round trip: no BEGIN/COMMIT, no separate gap check"
    else:  # the expectation is checked by the INSERT itself (no separate gap check)
        assert sent == ["INSERT"]
    sent.clear()
    async with store.engine.begin() as conn:
        await store.append(sid, [UserVerified()], expected_version=3, conn=conn)
    statements = [s for s in sent if not s.startswith(("BEGIN", "COMMIT"))]
    assert statements == ["INSERT"]
