"""Replay: rebuild a projection from the log.

Blue/green (the default): build `user__next` / `oauth_account__next` while the live tables keep
serving and live workers keep running, then swap them in atomically. In two phases:

1. Bulk: fix a safe head H; for each shard, read its events up to H in batches and fold them
   in memory per stream (streams never span shards, so only per-shard order matters), writing
   the final rows of a group of shards at once, with the group's progress rows, in one
   transaction. Memory is bounded by the group size; an interrupted run resumes per shard.
   With `jobs` > 1 (PostgreSQL) the shards are dealt out to that many processes.
2. Catch-up: from H, apply the log in commit-safe order with the same projection code, then,
   in ONE transaction that locks out live projectors and readers, apply the last events,
   drop the live tables, rename the new ones into place and move the checkpoints.

`in_place=True` rebuilds the live tables directly (offline: refused while a worker holds a
lease). `abandon()` drops an interrupted replay's tables.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    MetaData,
    Table,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import NullType

from events import Cursor, EventStore
from events.crypto import crypto_of
from events.envelope import SHARDS
from events.tables import data_keys, events
from projections import leases
from projections.errors import ReplayError
from projections.folding import StreamChange
from projections.generations import NEXT, clone, foreign_referrers, swap
from projections.tables import projection_checkpoints, projection_tombstones, utcnow
from projections.users import UserProjection, chunks

cp = projection_checkpoints
#: flush the bulk phase's folded rows after this many streams
FLUSH_STREAMS = 20_000


@dataclass
class Progress:
    phase: str  # "bulk", "catch-up", "swap", "done"
    done: int  # events read
    total: int  # events to read (an estimate while writes continue)
    started: float

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-6)


@dataclass(frozen=True)
class ReplayResult:
    events: int
    seconds: float
    users: int
    cursor: Cursor

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-6)


OnProgress = Callable[[Progress], None]


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
#: the streams' data key rows, read apart from the events (a join per batch cost a replay
#: about 2 µs per event): (master_key_id, wrapped_key, erased_at) by stream
KEY_COLUMNS = (
    data_keys.c.stream_id,
    data_keys.c.master_key_id,
    type_coerce(data_keys.c.wrapped_key, NullType()).label("wrapped_key"),
    data_keys.c.erased_at,
)


async def keys_of(conn: AsyncConnection, where: ColumnElement[bool]) -> dict[Any, Any]:
    rows = await conn.execute(select(*KEY_COLUMNS).where(where))
    return {r[0]: r[1:] for r in rows}


#: what the shard reader hands the folder: shard, a batch of rows (None: the shard is done),
#: the shard's data key rows
_Item = tuple[int, Sequence[Any] | None, dict[Any, Any]]


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


class Replay:
    """One replay of `projection` (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        projection: UserProjection,
        *,
        in_place: bool = False,
        partitions: int = 4,
        batch_size: int = 10_000,
        on_progress: OnProgress | None = None,
        jobs: int = 1,
    ) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self.engine = engine
        self.jobs = jobs
        self.store = EventStore(engine)
        self.live = projection
        self.in_place = in_place
        self.partitions = partitions
        self.batch_size = batch_size
        self.on_progress = on_progress or (lambda p: None)
        self.book = f"{projection.name}{NEXT}"  # progress rows in projection_checkpoints
        self.live_tables = [projection.user_table] + (
            [projection.oauth_table] if projection.oauth_table is not None else []
        )
        if in_place:
            self.target = projection
        else:
            md = MetaData()
            renamed = {t.name: f"{t.name}{NEXT}" for t in self.live_tables}
            nxt = [clone(t, md, renamed) for t in self.live_tables]
            self.target = projection.with_tables(
                nxt[0], nxt[1] if len(nxt) > 1 else None, self.book
            )
        self.next_tables: list[Table] = [self.target.user_table] + (
            [self.target.oauth_table] if self.target.oauth_table is not None else []
        )
        self.progress = Progress("bulk", 0, 0, time.monotonic())

    # ------------------------------------------------------------------ entry points
    async def run(self) -> ReplayResult:
        started = time.monotonic()
        head = await self._prepare()
        async with self.engine.connect() as conn:
            self.progress.total = int(
                await conn.scalar(select(func.count()).select_from(events)) or 0
            )
        await self._bulk(head)
        cursor = await self._catch_up()
        cursor = await self._finish(cursor)
        self.progress.phase = "done"
        self.on_progress(self.progress)
        async with self.engine.connect() as conn:
            users = await conn.scalar(select(func.count()).select_from(self.live.user_table))
        return ReplayResult(self.progress.done, time.monotonic() - started, int(users or 0), cursor)

    async def abandon(self) -> bool:
        """Drop an interrupted blue/green replay's tables and progress; the live tables are
        untouched. False when there was nothing to abandon."""
        async with self.engine.begin() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(cp).where(cp.c.name == self.book)
            )
            await conn.execute(delete(cp).where(cp.c.name == self.book))
            await conn.execute(
                delete(projection_tombstones).where(projection_tombstones.c.projection == self.book)
            )
            if not self.in_place:
                for table in reversed(self.next_tables):
                    await conn.run_sync(_drop, table)
        return bool(found)

    # ------------------------------------------------------------------ phases
    async def _prepare(self) -> Cursor:
        """Resume the replay in progress, or start one: the head H of the bulk phase."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(cp).where(cp.c.name == self.book))).all()
            if rows:
                return max((Cursor(r.tx_id, r.position) for r in rows), key=_key)
            if self.in_place:
                holders = await leases.live_holders(conn, self.live.name)
                if holders:
                    raise ReplayError(
                        f"workers hold leases on {self.live.name!r} "
                        f"({sorted(set(holders.values()))}): "
                        "stop them before an in-place replay, or replay blue/green"
                    )
            else:
                live_names = {t.name for t in self.live_tables} | {t.name for t in self.next_tables}
                referrers = await conn.run_sync(
                    foreign_referrers, self.live.user_table.name, live_names
                )
                if referrers:
                    raise ReplayError(
                        f"tables {referrers} have foreign keys to {self.live.user_table.name!r}: "
                        "a blue/green swap would break them; use --in-place"
                    )
            await self._reset_target(conn)
            head = await safe_head(conn)
            await conn.execute(
                insert(cp),
                [
                    {
                        "name": self.book,
                        "partition": s,
                        "partitions": SHARDS,
                        "tx_id": 0,
                        "position": 0,
                        "updated_at": utcnow(),
                    }
                    for s in range(SHARDS)
                ],
            )
            # the head is kept on a row of its own until every shard reaches it
            await conn.execute(
                insert(cp).values(
                    name=self.book,
                    partition=-1,
                    partitions=SHARDS,
                    tx_id=head.tx_id,
                    position=head.position,
                    updated_at=utcnow(),
                )
            )
            return head

    async def _reset_target(self, conn: AsyncConnection) -> None:
        tomb = projection_tombstones
        await conn.execute(delete(tomb).where(tomb.c.projection == self.target.name))
        if self.in_place:
            for table in reversed(self.next_tables):
                await conn.execute(delete(table))
            return
        for table in reversed(self.next_tables):
            await conn.run_sync(_drop, table)
        for table in self.next_tables:
            await conn.run_sync(_create, table)

    async def _bulk(self, head: Cursor) -> None:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(cp).where(cp.c.name == self.book))).all()
        if any(r.partitions == 1 for r in rows):
            return  # bulk phase already done
        todo = sorted(
            r.partition for r in rows if r.partition >= 0 and Cursor(r.tx_id, r.position) != head
        )
        self.progress.phase = "bulk"
        if self.jobs > 1 and len(todo) > 1 and self.engine.dialect.name == "postgresql":
            from projections.replay_jobs import bulk_in_processes

            await bulk_in_processes(self, todo, head)
        else:
            await self.bulk_shards(todo, head, self._count)
        async with self.engine.begin() as conn:  # bulk done: one progress row at H
            await conn.execute(delete(cp).where(cp.c.name == self.book))
            await conn.execute(
                insert(cp).values(
                    name=self.book,
                    partition=0,
                    partitions=1,
                    tx_id=head.tx_id,
                    position=head.position,
                    updated_at=utcnow(),
                )
            )

    def _count(self, n: int) -> None:
        self.progress.done += n
        self.on_progress(self.progress)

    async def bulk_shards(
        self, shards: list[int], head: Cursor, count: Callable[[int], None]
    ) -> None:
        """Read, fold and write `shards` up to `head`, counting the events read with `count`
        (one process's share of the bulk phase)."""
        # reading runs ahead of folding and writing (bounded queue): the database reads the
        # next shards while this process folds and the previous group is written
        queue: asyncio.Queue[_Item | None] = asyncio.Queue(4)
        reader = asyncio.create_task(self._read_shards(shards, head, queue))
        writing: asyncio.Task[None] | None = None
        try:
            changes: dict[uuid.UUID, StreamChange] = {}
            pending: list[int] = []
            while (item := await queue.get()) is not None:
                shard, chunk, keys = item
                if chunk is not None:
                    self.target.fold_rows(changes, chunk, crypto_of(self.engine), keys)
                    count(len(chunk))
                    continue
                pending.append(shard)
                if len(changes) >= FLUSH_STREAMS:
                    # one group is written while the next one folds
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._flush(changes, pending, head))
                    changes, pending = {}, []
            if writing is not None:
                await writing
            await self._flush(changes, pending, head)
            await reader
        finally:
            reader.cancel()
            if writing is not None:
                writing.cancel()

    async def _read_shards(
        self,
        shards: list[int],
        head: Cursor,
        queue: asyncio.Queue[_Item | None],
    ) -> None:
        """Each shard's events up to `head` in batches with the shard's data keys, then
        `(shard, None, {})`; `None` at the end. The keys are read first: a stream's key row
        commits with (or before) its first sealed event, so every event up to `head` finds
        its key."""
        pos = tuple_(events.c.tx_id, events.c.position)
        pg = self.engine.dialect.name == "postgresql"
        columns = PG_REPLAY_COLUMNS if pg else REPLAY_COLUMNS
        async with self.engine.connect() as conn:
            for shard in shards:
                cursor = Cursor.start()
                keys = await keys_of(conn, data_keys.c.shard == shard)
                while True:
                    stmt = (
                        select(*columns)
                        .where(events.c.shard == shard, pos > _at(cursor))
                        .where(pos <= _at(head))
                        .order_by(events.c.tx_id, events.c.position)
                        .limit(self.batch_size)
                    )
                    rows = (await conn.execute(stmt)).all()
                    await conn.rollback()  # no long-lived snapshot
                    if rows:
                        await queue.put((shard, rows, keys))
                        cursor = Cursor(rows[-1].tx_id, rows[-1].position)
                    if len(rows) < self.batch_size:
                        break
                await queue.put((shard, None, {}))
        await queue.put(None)

    async def _flush(
        self, changes: dict[uuid.UUID, StreamChange], shards: list[int], head: Cursor
    ) -> None:
        if not shards:
            return
        async with self.engine.begin() as conn:
            # the progress rows first: this begins the transaction the COPY then joins
            await conn.execute(
                cp.update()
                .where(cp.c.name == self.book, cp.c.partition.in_(shards))
                .values(tx_id=head.tx_id, position=head.position, updated_at=utcnow())
            )
            await self.target.write(conn, changes.values(), copy=True)

    async def _catch_up(self) -> Cursor:
        self.progress.phase = "catch-up"
        while True:
            async with self.engine.begin() as conn:
                cursor, n = await self._apply_next(conn)
            if n < self.batch_size:
                return cursor

    async def _apply_next(self, conn: AsyncConnection) -> tuple[Cursor, int]:
        row = (
            await conn.execute(select(cp.c.tx_id, cp.c.position).where(cp.c.name == self.book))
        ).one()
        cursor = Cursor(row.tx_id, row.position)
        stmt = self.store.after_statement(cursor, self.batch_size).with_only_columns(
            *REPLAY_COLUMNS
        )
        batch = (await conn.execute(stmt)).all()
        if not batch:
            return cursor, 0
        ids = list({r.stream_id for r in batch})
        keys: dict[Any, Any] = {}
        for part in chunks(ids):
            keys.update(await keys_of(conn, data_keys.c.stream_id.in_(part)))
        changes = await self.target.load(conn, ids)
        self.target.fold_rows(changes, batch, crypto_of(self.engine), keys)
        await self.target.write(conn, changes.values())
        cursor = Cursor(batch[-1].tx_id, batch[-1].position)
        await conn.execute(
            cp.update()
            .where(cp.c.name == self.book)
            .values(tx_id=cursor.tx_id, position=cursor.position, updated_at=utcnow())
        )
        self.progress.done += len(batch)
        self.progress.total = max(self.progress.total, self.progress.done)
        self.on_progress(self.progress)
        return cursor, len(batch)

    async def _finish(self, cursor: Cursor) -> Cursor:
        """The last events, the swap and the checkpoints, in one transaction."""
        self.progress.phase = "swap"
        self.on_progress(self.progress)
        name = self.live.name
        async with self.engine.begin() as conn:
            # lock out live projectors: their batches lock their checkpoint row first
            await conn.execute(
                cp.update().where(cp.c.name == self.book).values(updated_at=utcnow())
            )
            locked = select(cp.c.partition).where(cp.c.name == name).order_by(cp.c.partition)
            if conn.dialect.name == "postgresql":
                locked = locked.with_for_update()
            # checkpoint rows before the tables: a live batch locks its checkpoint row and then
            # writes the tables, so the other order deadlocks with it
            partitions = [r.partition for r in await conn.execute(locked)]
            if conn.dialect.name == "postgresql":
                names = ", ".join(
                    conn.dialect.identifier_preparer.quote(t.name) for t in self.live_tables
                )
                existing = await conn.run_sync(lambda c: set(_table_names(c)))
                if all(t.name in existing for t in self.live_tables):
                    await conn.execute(text(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))
            while True:
                cursor, n = await self._apply_next(conn)
                if n == 0:
                    break
            if not self.in_place:
                await conn.run_sync(swap, self.live_tables, self.next_tables)
                tomb = projection_tombstones
                await conn.execute(delete(tomb).where(tomb.c.projection == name))
                await conn.execute(
                    tomb.update().where(tomb.c.projection == self.book).values(projection=name)
                )
            count = len(partitions) or self.partitions
            await conn.execute(delete(cp).where(cp.c.name.in_([name, self.book])))
            await conn.execute(
                insert(cp),
                [
                    {
                        "name": name,
                        "partition": p,
                        "partitions": count,
                        "tx_id": cursor.tx_id,
                        "position": cursor.position,
                        "updated_at": utcnow(),
                    }
                    for p in range(count)
                ],
            )
        return cursor


def _drop(sync_conn: Any, table: Table) -> None:
    table.drop(sync_conn, checkfirst=True)


def _create(sync_conn: Any, table: Table) -> None:
    table.create(sync_conn)


def _at(cursor: Cursor) -> Any:
    return tuple_(literal(cursor.tx_id), literal(cursor.position))


def _key(c: Cursor) -> tuple[int, int]:
    return (c.tx_id, c.position)


def _table_names(sync_conn: Any) -> list[str]:
    from sqlalchemy import inspect

    return list(inspect(sync_conn).get_table_names())


async def replay(
    engine: AsyncEngine,
    projection: UserProjection,
    *,
    in_place: bool = False,
    partitions: int = 4,
    batch_size: int = 10_000,
    on_progress: OnProgress | None = None,
    jobs: int = 1,
) -> ReplayResult:
    """Rebuild `projection` from the log (blue/green unless `in_place`); resumes an
    interrupted replay. `jobs` > 1 runs the bulk phase in that many processes on PostgreSQL
    (`projections.replay_jobs`; the engine's idle pooled connections are closed first, so none
    crosses the fork). The entry point for `registry replay` and the benchmarks."""
    job = Replay(
        engine,
        projection,
        in_place=in_place,
        partitions=partitions,
        batch_size=batch_size,
        on_progress=on_progress,
        jobs=jobs,
    )
    return await job.run()
