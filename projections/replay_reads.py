"""What a replay reads of the log: the columns it needs, the commit-safe head, and each shard's
events in batches together with the shard's data keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    Text,
    Tuple,
    bindparam,
    cast,
    literal,
    literal_column,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.types import NullType

from events import Cursor
from events.tables import data_keys, events
from projections.folding import StreamChange

#: what a replay reads of each event (no metadata, no event id: the projection needs neither);
#: the drivers return bytes already: skip LargeBinary's per-value result processing
_SEALED = type_coerce(events.c.sealed, NullType()).label("sealed")
#: the payload as its JSON text, decoded by the folder (`events.codec`), not by the driver's
#: codec with `json.loads`
_DATA = cast(events.c.data, Text).label("data")
REPLAY_COLUMNS = (
    events.c.position,
    events.c.tx_id,
    events.c.stream_id,
    events.c.stream_version,
    events.c.event_type,
    events.c.schema_version,
    _DATA,
    events.c.recorded_at,
    _SEALED,
)
#: on PostgreSQL the driver already returns aware UTC timestamps: skip the type decorator
PG_REPLAY_COLUMNS = (
    *REPLAY_COLUMNS[:7],
    type_coerce(events.c.recorded_at, DateTime(timezone=True)).label("recorded_at"),
    _SEALED,
)
#: the streams' data key rows, read apart from the events (a join per batch costs the replay
#: time on every event): (master_key_id, wrapped_key, erased_at) by stream
KEY_COLUMNS = (
    data_keys.c.stream_id,
    data_keys.c.master_key_id,
    type_coerce(data_keys.c.wrapped_key, NullType()).label("wrapped_key"),
    data_keys.c.erased_at,
)

#: a stream's data key row: (master_key_id, wrapped_key, erased_at); an erased key keeps
#: neither id nor key (`erased_at` as the bulk reads give timestamps: see `read_shards`)
KeyRow = tuple[str | None, bytes | None, datetime | int | None]
#: the data key rows of some streams, by stream
Keys = dict[uuid.UUID, KeyRow]
#: what the shard reader hands the folder: shard, a batch of rows (None: the shard is done),
#: the shard's data key rows
ShardBatch = tuple[int, Sequence[Sequence[Any]] | None, Keys]


async def keys_of(conn: AsyncConnection, where: ColumnElement[bool]) -> Keys:
    rows = await conn.execute(select(*KEY_COLUMNS).where(where))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def safe_head(conn: AsyncConnection) -> Cursor:
    """The newest cursor below which no event can still appear (commit-safe on PostgreSQL)."""
    stmt = select(events.c.tx_id, events.c.position)
    if conn.dialect.name == "postgresql":
        xmin: ColumnElement[int] = literal_column(
            "(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"
        )
        stmt = stmt.where(events.c.tx_id < xmin)
    row = (
        await conn.execute(stmt.order_by(events.c.tx_id.desc(), events.c.position.desc()).limit(1))
    ).first()
    return Cursor(row.tx_id, row.position) if row else Cursor.start()


async def read_shards(
    engine: AsyncEngine,
    shards: list[int],
    head: Cursor,
    batch_size: int,
    queue: asyncio.Queue[ShardBatch | None],
    *,
    readers: int = 1,
) -> None:
    """Each shard's events up to `head` in batches with the shard's data keys, then
    `(shard, None, {})`; `None` at the end. The keys are read first: a stream's key row
    commits with (or before) its first sealed event, so every event up to `head` finds
    its key. Each read is a statement of its own: no long-lived snapshot.

    `readers` connections read at once, each a whole shard at a time (its batches in order,
    then its end), so the batches of different shards may interleave; the next shard's reads
    are on their way while the folder works through the previous ones.

    On PostgreSQL the timestamps come as integers, microseconds from `PG_EPOCH` (asyncpg makes
    a datetime of each at a cost near the rest of the row's): the folded rows keep them so
    until `as_datetimes` turns the few that are written into datetimes."""
    pos = tuple_(events.c.tx_id, events.c.position)
    columns = PG_REPLAY_COLUMNS if engine.dialect.name == "postgresql" else REPLAY_COLUMNS
    shard = bindparam("shard", type_=events.c.shard.type)
    after = tuple_(
        bindparam("tx_id", type_=events.c.tx_id.type),
        bindparam("position", type_=events.c.position.type),
    )
    batch = (
        select(*columns)
        .where(events.c.shard == shard, pos > after)
        .where(pos <= at(head))
        .order_by(events.c.tx_id, events.c.position)
        .limit(batch_size)
    )
    keys_stmt = select(*KEY_COLUMNS).where(
        data_keys.c.shard == bindparam("shard", type_=data_keys.c.shard.type)
    )
    todo = iter(shards)

    async def reader() -> None:
        async with engine.connect() as conn:
            fetch = await Fetcher.on(conn, dedicated=True)
            try:
                await read(fetch)
            finally:
                await fetch.restore()

    async def read(fetch: Fetcher) -> None:
        for number in todo:  # shared: each shard goes to the first reader free
            cursor = Cursor.start()
            keys = {r[0]: (r[1], r[2], r[3]) for r in await fetch(keys_stmt, shard=number)}
            while True:
                rows = await fetch(
                    batch, shard=number, tx_id=cursor.tx_id, position=cursor.position
                )
                if rows:
                    await queue.put((number, rows, keys))
                    last = rows[-1]  # (position, tx_id, ...): REPLAY_COLUMNS
                    cursor = Cursor(last[1], last[0])
                if len(rows) < batch_size:
                    break
            await queue.put((number, None, {}))

    tasks = [asyncio.create_task(reader()) for _ in range(max(1, min(readers, len(shards))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    await queue.put(None)


class Fetcher:
    """Runs a replay's reads on one connection, each on its own (no transaction kept open),
    and returns their rows as tuples.

    On PostgreSQL a statement is compiled once and run on the connection's asyncpg driver,
    outside any transaction: its records go to the folder as they come, without a row object
    of SQLAlchemy's around each (and without a BEGIN and a ROLLBACK around each read)."""

    def __init__(
        self,
        conn: AsyncConnection,
        raw_fetch: RawFetch | None,
        driver: asyncpg.Connection | None = None,
    ) -> None:
        self.conn = conn
        self.raw_fetch = raw_fetch
        #: the asyncpg connection changed for a replay's reads (`dedicated`), to restore
        self.changed = driver
        #: by statement: its compiled form, its SQL and its parameters' names in order
        self.compiled: dict[Select[Any], tuple[Compiled, str, tuple[str, ...]]] = {}

    @classmethod
    async def on(cls, conn: AsyncConnection, *, dedicated: bool = False) -> Fetcher:
        """A fetcher on `conn`. `dedicated` (PostgreSQL): the connection is the replay's own,
        changed for its reads until `restore()` (the caller's `finally`): timestamps decode
        as integers (microseconds from `PG_EPOCH`), and the planner reads a shard along its
        index (in the order asked for, where a bitmap scan sorted every shard's rows again:
        a quarter of the reads' time on the server)."""
        raw_fetch = None
        changed: asyncpg.Connection | None = None
        if on_asyncpg(conn):
            driver: Any = (await conn.get_raw_connection()).driver_connection
            if dedicated:
                await driver.set_type_codec(
                    "timestamptz",
                    schema="pg_catalog",
                    encoder=_not_sent,
                    decoder=itemgetter(0),  # the tuple format's (microseconds,)
                    format="tuple",
                )
                await driver.execute("SET enable_bitmapscan = off")
                changed = driver
            raw_fetch = driver.fetch
        return cls(conn, raw_fetch, changed)

    async def restore(self) -> None:
        """Undo what `on(dedicated=True)` changed on the connection, so that it goes back to
        the pool as it came (asyncpg's `reset_type_codec` also drops the statements prepared
        with the integer timestamps); if that fails, the connection is invalidated instead,
        never pooled."""
        driver, self.changed = self.changed, None
        if driver is None:
            return
        try:
            await driver.reset_type_codec("timestamptz", schema="pg_catalog")
            await driver.execute("RESET enable_bitmapscan")
        except BaseException:
            await self.conn.invalidate()
            raise

    async def __call__(self, stmt: Select[Any], **params: object) -> Sequence[Sequence[Any]]:
        if self.raw_fetch is None:
            rows = (await self.conn.execute(stmt, params)).all()
            await self.conn.rollback()
            return rows
        found = self.compiled.get(stmt)
        if found is None:
            made = stmt.compile(dialect=self.conn.dialect)
            order = tuple(getattr(made, "positiontup", None) or ())
            found = self.compiled[stmt] = (made, str(made), order)
        compiled, sql, names = found
        values: dict[str, Any] = dict(compiled.construct_params(params) or {})
        return await self.raw_fetch(sql, *(values[name] for name in names))


def on_asyncpg(conn: AsyncConnection) -> bool:
    """The replay's reads on `conn` go through its asyncpg driver."""
    return conn.dialect.name == "postgresql"


def _not_sent(value: object) -> tuple[int]:
    raise TypeError("a replay's reads send no timestamps")


#: where PostgreSQL counts timestamps from
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: the folded columns that hold an event's timestamp
STAMPED = ("created_at", "updated_at")


def as_datetimes(changes: Iterable[StreamChange]) -> None:
    """The timestamps of folded rows read as integers (microseconds from `PG_EPOCH`, see
    `read_shards`) as datetimes, in place."""
    epoch = PG_EPOCH
    for change in changes:
        for row in (change.insert, change.update):
            if row:
                for name in STAMPED:
                    value = row.get(name)
                    if type(value) is int:
                        row[name] = epoch + timedelta(0, 0, value)  # microseconds


#: asyncpg's `Connection.fetch`: (sql, *args) -> records
RawFetch = Callable[..., Awaitable[Sequence[Sequence[Any]]]]


def at(cursor: Cursor) -> Tuple:
    """`cursor` as a `(tx_id, position)` tuple to compare the log's cursor with."""
    return tuple_(literal(cursor.tx_id), literal(cursor.position))
