"""What a replay reads of the log: the columns it needs, the commit-safe head, and each shard's
events in batches together with the shard's data keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Row,
    Tuple,
    literal,
    literal_column,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import NullType

from events import Cursor
from events.tables import data_keys, events

#: what a replay reads of each event (no metadata, no event id: the projection needs neither);
#: the drivers return bytes already: skip LargeBinary's per-value result processing
_SEALED = type_coerce(events.c.sealed, NullType()).label("sealed")
REPLAY_COLUMNS = (
    events.c.position,
    events.c.tx_id,
    events.c.stream_id,
    events.c.stream_version,
    events.c.event_type,
    events.c.schema_version,
    events.c.data,
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
#: neither id nor key
KeyRow = tuple[str | None, bytes | None, datetime | None]
#: the data key rows of some streams, by stream
Keys = dict[uuid.UUID, KeyRow]
#: what the shard reader hands the folder: shard, a batch of rows (None: the shard is done),
#: the shard's data key rows
ShardBatch = tuple[int, Sequence[Row[Any]] | None, Keys]


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
) -> None:
    """Each shard's events up to `head` in batches with the shard's data keys, then
    `(shard, None, {})`; `None` at the end. The keys are read first: a stream's key row
    commits with (or before) its first sealed event, so every event up to `head` finds
    its key."""
    pos = tuple_(events.c.tx_id, events.c.position)
    columns = PG_REPLAY_COLUMNS if engine.dialect.name == "postgresql" else REPLAY_COLUMNS
    async with engine.connect() as conn:
        for shard in shards:
            cursor = Cursor.start()
            keys = await keys_of(conn, data_keys.c.shard == shard)
            while True:
                stmt = (
                    select(*columns)
                    .where(events.c.shard == shard, pos > at(cursor))
                    .where(pos <= at(head))
                    .order_by(events.c.tx_id, events.c.position)
                    .limit(batch_size)
                )
                rows = (await conn.execute(stmt)).all()
                await conn.rollback()  # no long-lived snapshot
                if rows:
                    await queue.put((shard, rows, keys))
                    cursor = Cursor(rows[-1].tx_id, rows[-1].position)
                if len(rows) < batch_size:
                    break
            await queue.put((shard, None, {}))
    await queue.put(None)


def at(cursor: Cursor) -> Tuple:
    """`cursor` as a `(tx_id, position)` tuple to compare the log's cursor with."""
    return tuple_(literal(cursor.tx_id), literal(cursor.position))
