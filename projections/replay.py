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

The phases' parts live beside this module: `replay_reads` (what is read of the log),
`replay_fold` (stored rows folded through the projection's handlers), `replay_bulk` (the bulk
phase), `replay_jobs` (the bulk phase in several processes), `replay_book` (the progress
rows).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import MetaData, Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import Cursor, EventStore
from events.crypto import crypto_of
from events.tables import data_keys, events
from projections import leases, replay_book
from projections.errors import ReplayError
from projections.generations import (
    NEXT,
    clone,
    create_table,
    drop_table,
    foreign_referrers,
    swap,
)
from projections.replay_bulk import BulkJob, bulk_shards
from projections.replay_jobs import bulk_in_processes
from projections.replay_reads import REPLAY_COLUMNS, Keys, keys_of, safe_head
from projections.tables import projection_checkpoints, projection_tombstones
from projections.users import UserProjection
from projections.writing import chunks

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
        self.live_tables = _tables_of(projection)
        if in_place:
            self.target = projection
        else:
            md = MetaData()
            renamed = {t.name: f"{t.name}{NEXT}" for t in self.live_tables}
            nxt = [clone(t, md, renamed) for t in self.live_tables]
            self.target = projection.with_tables(
                nxt[0], nxt[1] if len(nxt) > 1 else None, self.book
            )
        self.next_tables = _tables_of(self.target)
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
            found = await replay_book.drop_book(conn, self.book)
            if not self.in_place:
                for table in reversed(self.next_tables):
                    await conn.run_sync(drop_table, table)
        return found

    # ------------------------------------------------------------------ phases
    async def _prepare(self) -> Cursor:
        """Resume the replay in progress, or start one: the head H of the bulk phase."""
        async with self.engine.begin() as conn:
            resumed = await replay_book.resumed_head(conn, self.book)
            if resumed is not None:
                return resumed
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
            await replay_book.open_book(conn, self.book, head)
            return head

    async def _reset_target(self, conn: AsyncConnection) -> None:
        tomb = projection_tombstones
        await conn.execute(delete(tomb).where(tomb.c.projection == self.target.name))
        if self.in_place:
            for table in reversed(self.next_tables):
                await conn.execute(delete(table))
            return
        for table in reversed(self.next_tables):
            await conn.run_sync(drop_table, table)
        for table in self.next_tables:
            await conn.run_sync(create_table, table)

    async def _bulk(self, head: Cursor) -> None:
        async with self.engine.connect() as conn:
            todo = await replay_book.shards_to_do(conn, self.book, head)
        if todo is None:
            return  # bulk phase already done
        self.progress.phase = "bulk"
        if self.jobs > 1 and len(todo) > 1 and self.engine.dialect.name == "postgresql":
            base = self.progress.done

            def report(done: int) -> None:
                self.progress.done = base + done
                self.on_progress(self.progress)

            async def run_share(shards: list[int], count: Callable[[int], None]) -> None:
                await self.bulk_shards(shards, head, count)

            await bulk_in_processes(self.engine, run_share, todo, jobs=self.jobs, report=report)
        else:
            await self.bulk_shards(todo, head, self._count)
        async with self.engine.begin() as conn:
            await replay_book.close_bulk(conn, self.book, head)

    def _count(self, n: int) -> None:
        self.progress.done += n
        self.on_progress(self.progress)

    async def bulk_shards(
        self, shards: list[int], head: Cursor, count: Callable[[int], None]
    ) -> None:
        """Read, fold and write `shards` up to `head`, counting the events read with `count`
        (one process's share of the bulk phase)."""
        job = BulkJob(self.engine, self.target, self.book, head, self.batch_size, FLUSH_STREAMS)
        await bulk_shards(job, shards, count)

    async def _catch_up(self) -> Cursor:
        self.progress.phase = "catch-up"
        while True:
            async with self.engine.begin() as conn:
                cursor, n = await self._apply_next(conn)
            if n < self.batch_size:
                return cursor

    async def _apply_next(self, conn: AsyncConnection) -> tuple[Cursor, int]:
        cursor = await replay_book.catch_up_cursor(conn, self.book)
        stmt = self.store.after_statement(cursor, self.batch_size).with_only_columns(
            *REPLAY_COLUMNS
        )
        batch = (await conn.execute(stmt)).all()
        if not batch:
            return cursor, 0
        ids: list[uuid.UUID] = list({r.stream_id for r in batch})
        keys: Keys = {}
        for part in chunks(ids):
            keys.update(await keys_of(conn, data_keys.c.stream_id.in_(part)))
        changes = await self.target.load(conn, ids)
        self.target.fold_rows(changes, batch, crypto_of(self.engine), keys)
        await self.target.write(conn, changes.values())
        cursor = Cursor(batch[-1].tx_id, batch[-1].position)
        await replay_book.advance(conn, self.book, cursor)
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
            partitions = await replay_book.lock_out_live(conn, self.book, name, self.live_tables)
            while True:
                cursor, n = await self._apply_next(conn)
                if n == 0:
                    break
            if not self.in_place:
                await conn.run_sync(swap, self.live_tables, self.next_tables)
                await replay_book.move_tombstones(conn, self.book, name)
            count = len(partitions) or self.partitions
            await replay_book.hand_over(conn, name, self.book, cursor, count)
        return cursor


def _tables_of(projection: UserProjection) -> list[Table]:
    """The projection's tables, users first."""
    oauth = projection.oauth_table
    return [projection.user_table] + ([oauth] if oauth is not None else [])


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
