"""Figure 2: appends, one event per command, 8 concurrent writers.

Ours: `EventStore.append` of one `UserRegistered` to a new stream (validation, JSON, the
commit-safe tx_id, the NOTIFY trigger included). Baselines, on the same database:
- raw asyncpg: one single-row INSERT transaction per event into a copy of the `events` table
  (same columns, indexes and defaults, no trigger): the naive ceiling;
- the `eventsourcing` library's `PostgresApplicationRecorder.insert_events` (psycopg 3, one
  thread per writer, its table lock serialising writers).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import asyncpg
from sqlalchemy.engine import make_url

from bench.common import (
    CALLERS,
    Options,
    Row,
    create_schema,
    pg_dsn,
    ratio_row,
    scratch_database,
    side_by_side,
)
from events import EventStore, UserRegistered, create_engine, shard_of

FIGURE = "appends"


def _event(i: int) -> UserRegistered:
    return UserRegistered(
        email=f"user{i}-{uuid.uuid4().hex[:6]}@example.com", hashed_password="x" * 60
    )


async def run(opts: Options) -> list[Row]:
    rows: list[Row] = []
    async with scratch_database(opts.database_url, "appends") as url:
        engine = create_engine(url, pool_size=CALLERS, max_overflow=0)
        store = EventStore(engine)
        await create_schema(engine)
        pool = await asyncpg.create_pool(pg_dsn(url), min_size=CALLERS, max_size=CALLERS)
        assert pool is not None
        await pool.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        await pool.execute("CREATE SEQUENCE raw_events_seq")
        await pool.execute(
            "ALTER TABLE raw_events ALTER COLUMN position SET DEFAULT nextval('raw_events_seq')"
        )
        n = 0

        async def ours(_: int) -> None:
            nonlocal n
            n += 1
            await store.append(uuid.uuid4(), [_event(n)], expected_version=0)

        insert = (
            "INSERT INTO raw_events (stream_id, stream_version, shard, event_id, event_type,"
            " schema_version, data, metadata, recorded_at) VALUES ($1,1,$2,$3,$4,$5,$6,$7,$8)"
            " RETURNING position, tx_id"
        )

        async def raw(_: int) -> None:
            nonlocal n
            n += 1
            ev = _event(n)
            sid = uuid.uuid4()
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchrow(
                    insert,
                    sid,
                    shard_of(sid),
                    uuid.uuid4(),
                    ev.event_type,
                    ev.schema_version,
                    json.dumps(ev.model_dump(mode="json")),
                    "{}",
                    datetime.now(UTC),
                )

        try:
            a, b = await side_by_side(ours, raw, opts)
            rows.append(
                ratio_row(
                    "2a appends vs raw asyncpg INSERT",
                    a,
                    b,
                    1.0,
                    unit="events/s",
                    note=f"{CALLERS} writers, 1 event per transaction",
                )
            )
            rows.append(await _vs_eventsourcing(opts, url, ours))
        finally:
            await pool.close()
            await engine.dispose()
    return rows


async def _vs_eventsourcing(opts: Options, url: str, ours: Callable[[int], Awaitable[None]]) -> Row:
    goal = 5.0
    try:
        # the `bench` extra's baseline: without it the row says "not available"
        from eventsourcing.persistence import StoredEvent  # noqa: PLC0415  # optional baseline
        from eventsourcing.postgres import (  # noqa: PLC0415  # optional baseline
            PostgresApplicationRecorder,
            PostgresDatastore,
        )
    except ImportError as exc:
        return Row(
            "2b appends vs eventsourcing recorder",
            goal=f">= {goal:g}x",
            note=f"not available: eventsourcing[postgres] not installed ({exc})",
        )
    u = make_url(url)
    datastore = PostgresDatastore(
        dbname=u.database or "",
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password or "",
        pool_size=CALLERS,
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name="es_stored_events")
    recorder.create_table()
    threads = ThreadPoolExecutor(CALLERS, thread_name_prefix="eventsourcing")
    counter = iter(range(10**12))

    def insert_one() -> None:
        ev = _event(next(counter))
        recorder.insert_events(
            [
                StoredEvent(
                    originator_id=uuid.uuid4(),
                    originator_version=1,
                    topic="events.catalog:UserRegistered",
                    state=json.dumps(ev.model_dump(mode="json")).encode(),
                )
            ]
        )

    async def theirs(_: int) -> None:
        await asyncio.get_running_loop().run_in_executor(threads, insert_one)

    try:
        a, b = await side_by_side(ours, theirs, opts)
    finally:
        threads.shutdown()
        datastore.close()
    return ratio_row(
        "2b appends vs eventsourcing recorder",
        a,
        b,
        goal,
        unit="events/s",
        note="eventsourcing 9 PostgresApplicationRecorder, 8 threads",
    )
