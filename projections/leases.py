"""Partitions, checkpoints and leases (a lease table with expiry on the database's clock, so it
works the same on SQLite and PostgreSQL).

A partition is a set of shards (`shard % partitions == partition`): each stream lives in
exactly one, so its events stay in order. One worker at a time holds a partition's lease; a
batch renews the lease in its own transaction (locking the lease row on PostgreSQL) before it
writes, so a worker whose lease expired cannot commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Table,
    and_,
    column,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from events import Cursor
from events.envelope import SHARDS, shard_of
from projections.errors import ProjectionError
from projections.tables import (
    projection_checkpoints,
    projection_failures,
    projection_leases,
    projection_workers,
    utcnow,
)

cp, leases, workers = projection_checkpoints, projection_leases, projection_workers


def shards_of(partition: int, partitions: int) -> list[int]:
    return [s for s in range(SHARDS) if s % partitions == partition]


def partition_of(stream_id: uuid.UUID, partitions: int) -> int:
    return shard_of(stream_id) % partitions


def db_now(conn: AsyncConnection) -> ColumnElement[float]:
    """Now, in epoch seconds, on the database's clock."""
    if conn.dialect.name == "postgresql":
        return literal_column("extract(epoch from clock_timestamp())::float8")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def _insert(conn: AsyncConnection) -> Callable[[Table], postgresql.Insert | sqlite.Insert]:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    partitions: int
    cursor: Cursor


async def ensure_partitions(conn: AsyncConnection, name: str, partitions: int) -> None:
    """Create the checkpoint and lease rows of `name`'s partitions. A projection stored with
    another partition count is re-partitioned (every new partition starts at the lowest old
    checkpoint; re-applying is harmless) when no worker holds a live lease on it."""
    rows = (await conn.execute(select(cp).where(cp.c.name == name))).all()
    counts = {r.partitions for r in rows}
    if rows and (counts != {partitions} or len(rows) != partitions):
        holders = await live_holders(conn, name)
        if holders:
            raise ProjectionError(
                f"projection {name!r} runs with {sorted(counts)} partition(s) held by "
                f"{sorted(set(holders.values()))}; stop those workers or use the same "
                f"partition count ({partitions} requested)"
            )
        low = min(rows, key=lambda r: (r.tx_id, r.position))
        await conn.execute(delete(cp).where(cp.c.name == name))
        await conn.execute(delete(leases).where(leases.c.name == name))
        # a failure names a partition of the old layout: the new ones try its event afresh
        await conn.execute(delete(projection_failures).where(projection_failures.c.name == name))
        start = Cursor(low.tx_id, low.position)
    else:
        start = Cursor.start()
    ins = _insert(conn)
    values = [
        {
            "name": name,
            "partition": p,
            "partitions": partitions,
            "tx_id": start.tx_id,
            "position": start.position,
            "updated_at": utcnow(),
        }
        for p in range(partitions)
    ]
    await conn.execute(ins(cp).values(values).on_conflict_do_nothing())
    lease_rows = [{"name": name, "partition": p, "expires_at": 0.0} for p in range(partitions)]
    await conn.execute(ins(leases).values(lease_rows).on_conflict_do_nothing())


async def read_checkpoint(conn: AsyncConnection, name: str, partition: int) -> Cursor | None:
    stmt = select(cp.c.tx_id, cp.c.position).where(cp.c.name == name, cp.c.partition == partition)
    row = (await conn.execute(stmt)).first()
    return Cursor(row.tx_id, row.position) if row else None


async def write_checkpoint(conn: AsyncConnection, name: str, partition: int, at: Cursor) -> None:
    await conn.execute(
        update(cp)
        .where(cp.c.name == name, cp.c.partition == partition)
        .values(tx_id=at.tx_id, position=at.position, updated_at=utcnow())
    )


async def renew(conn: AsyncConnection, name: str, partition: int, holder: str, ttl: float) -> bool:
    """Extend our live lease (and lock its row until commit). False: it is not ours anymore."""
    now = db_now(conn)
    result = await conn.execute(
        update(leases)
        .where(
            leases.c.name == name,
            leases.c.partition == partition,
            leases.c.holder == holder,
            leases.c.expires_at > now,
        )
        .values(expires_at=now + ttl)
    )
    return bool(result.rowcount)


async def claim(
    conn: AsyncConnection, name: str, partitions: list[int], holder: str, ttl: float
) -> dict[int, Cursor]:
    """Start a batch's writes: renew our live leases of `partitions` and read their
    checkpoints, locked until commit on PostgreSQL (one statement there). Returns the
    checkpoint of each partition still ours; a partition missing from it was lost."""
    if conn.dialect.name != "postgresql":
        found: dict[int, Cursor] = {}
        for partition in partitions:
            if await renew(conn, name, partition, holder, ttl):
                at = await read_checkpoint(conn, name, partition)
                if at is not None:
                    found[partition] = at
        return found
    now = db_now(conn)
    renewed = (
        update(leases)
        .where(
            leases.c.name == name,
            leases.c.partition.in_(partitions),
            leases.c.holder == holder,
            leases.c.expires_at > now,
        )
        .values(expires_at=now + ttl)
        .returning(leases.c.partition)
        .cte("renewed")
    )
    stmt = (
        select(cp.c.partition, cp.c.tx_id, cp.c.position)
        .join_from(cp, renewed, renewed.c.partition == cp.c.partition)
        .where(cp.c.name == name)
        .order_by(cp.c.partition)
        .with_for_update(of=cp)
    )
    rows = (await conn.execute(stmt)).all()
    return {row.partition: Cursor(row.tx_id, row.position) for row in rows}


#: PostgreSQL: every partition's new checkpoint and the wake-up of waiting readers, in one
#: statement with a fixed text (prepared once)
_ADVANCE_PG = text(
    """
    WITH moved AS (
      UPDATE projection_checkpoints AS c
      SET tx_id = v.tx_id, position = v.position, updated_at = :now
      FROM unnest(CAST(:partitions AS integer[]), CAST(:tx_ids AS bigint[]),
                  CAST(:positions AS bigint[])) AS v(partition, tx_id, position)
      WHERE c.name = :name AND c.partition = v.partition
    )
    SELECT pg_notify(:channel, :name)
    """
)


async def advance(
    conn: AsyncConnection, name: str, cursors: dict[int, Cursor], *, notify: str
) -> None:
    """Move the checkpoints of a batch's partitions (inside its transaction); on PostgreSQL
    also NOTIFY `notify` with the projection's name when the transaction commits."""
    if conn.dialect.name != "postgresql":
        for partition, at in cursors.items():
            await write_checkpoint(conn, name, partition, at)
        return
    parts = sorted(cursors)
    await conn.execute(
        _ADVANCE_PG,
        {
            "now": utcnow(),
            "partitions": parts,
            "tx_ids": [cursors[p].tx_id for p in parts],
            "positions": [cursors[p].position for p in parts],
            "name": name,
            "channel": notify,
        },
    )


#: PostgreSQL: a batch its writers projected already, committed in one statement (no
#: transaction of its own): our live leases of its partitions renewed, and each checkpoint
#: moved only where it still is where the batch was read from and the lease was renewed
_ADVANCE_HELD_PG = text(
    """
    WITH renewed AS (
      UPDATE projection_leases
      SET expires_at = extract(epoch from clock_timestamp())::float8 + :ttl
      WHERE name = :name AND partition = ANY(CAST(:partitions AS integer[]))
        AND holder = :holder AND expires_at > extract(epoch from clock_timestamp())::float8
      RETURNING partition
    ), moved AS (
      UPDATE projection_checkpoints AS c
      SET tx_id = v.tx_id, position = v.position, updated_at = :now
      FROM unnest(CAST(:partitions AS integer[]), CAST(:from_tx_ids AS bigint[]),
                  CAST(:from_positions AS bigint[]), CAST(:tx_ids AS bigint[]),
                  CAST(:positions AS bigint[]))
           AS v(partition, from_tx_id, from_position, tx_id, position)
      WHERE c.name = :name AND c.partition = v.partition
        AND c.tx_id = v.from_tx_id AND c.position = v.from_position
        AND v.partition IN (SELECT partition FROM renewed)
      RETURNING c.partition
    )
    SELECT partition, pg_notify(:channel, :name) FROM moved
    """
).columns(column("partition", Integer), column("pg_notify", String))


async def advance_held(
    conn: AsyncConnection,
    name: str,
    holder: str,
    ttl: float,
    moves: dict[int, tuple[Cursor, Cursor]],
    *,
    notify: str,
) -> set[int]:
    """PostgreSQL, outside a transaction: move each partition's checkpoint from the first
    cursor of `moves` to the second, where our lease is live (and renewed) and the checkpoint
    is still at the first; NOTIFY `notify` when any moved. Returns the partitions moved."""
    parts = sorted(moves)
    rows = await conn.execute(
        _ADVANCE_HELD_PG,
        {
            "now": utcnow(),
            "ttl": ttl,
            "name": name,
            "holder": holder,
            "partitions": parts,
            "from_tx_ids": [moves[p][0].tx_id for p in parts],
            "from_positions": [moves[p][0].position for p in parts],
            "tx_ids": [moves[p][1].tx_id for p in parts],
            "positions": [moves[p][1].position for p in parts],
            "channel": notify,
        },
    )
    return {row.partition for row in rows}


async def acquire(
    conn: AsyncConnection, name: str, partition: int, holder: str, ttl: float
) -> bool:
    """Take a free, expired or already-ours lease."""
    now = db_now(conn)
    result = await conn.execute(
        update(leases)
        .where(
            leases.c.name == name,
            leases.c.partition == partition,
            or_(leases.c.holder.is_(None), leases.c.holder == holder, leases.c.expires_at <= now),
        )
        .values(holder=holder, expires_at=now + ttl)
    )
    return bool(result.rowcount)


async def release(conn: AsyncConnection, name: str, partitions: list[int], holder: str) -> None:
    if partitions:
        await conn.execute(
            update(leases)
            .where(
                leases.c.name == name,
                leases.c.partition.in_(partitions),
                leases.c.holder == holder,
            )
            .values(holder=None, expires_at=0.0)
        )


async def heartbeat(conn: AsyncConnection, name: str, worker_id: str, ttl: float) -> int:
    """Record that this worker is alive; the number of live workers on `name`."""
    now = db_now(conn)
    ins = _insert(conn)
    stmt = ins(workers).values(name=name, worker_id=worker_id, expires_at=now + ttl)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[workers.c.name, workers.c.worker_id],
            set_={"expires_at": stmt.excluded.expires_at},
        )
    )
    await conn.execute(delete(workers).where(workers.c.name == name, workers.c.expires_at < now))
    count = await conn.scalar(
        select(func.count()).select_from(workers).where(workers.c.name == name)
    )
    return int(count or 1)


async def leave(conn: AsyncConnection, name: str, worker_id: str) -> None:
    await conn.execute(
        delete(workers).where(workers.c.name == name, workers.c.worker_id == worker_id)
    )


async def live_holders(conn: AsyncConnection, name: str) -> dict[int, str]:
    """Partition → holder, for the live leases of `name`."""
    rows = await conn.execute(
        select(leases.c.partition, leases.c.holder).where(
            and_(
                leases.c.name == name,
                leases.c.holder.is_not(None),
                leases.c.expires_at > db_now(conn),
            )
        )
    )
    return {r.partition: r.holder for r in rows}


async def partition_count(conn: AsyncConnection, name: str) -> int | None:
    found = await conn.scalar(select(func.max(cp.c.partitions)).where(cp.c.name == name))
    return int(found) if found is not None else None
