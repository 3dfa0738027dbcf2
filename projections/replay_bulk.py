"""The bulk phase of a replay: fold shards up to the head in memory per stream and write each
group's final rows together with the group's progress rows, in one transaction.

Streams never span shards, so only per-shard order matters; memory is bounded by the group
size (`BulkJob.flush_streams`), and an interrupted run resumes per shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from events import Cursor
from events.crypto import crypto_of
from projections.folding import StreamChange
from projections.replay_reads import ShardBatch, as_datetimes, read_shards
from projections.tables import projection_checkpoints, utcnow
from projections.users import UserProjection

cp = projection_checkpoints


@dataclass(frozen=True)
class BulkJob:
    """What one process needs for its share of the bulk phase."""

    engine: AsyncEngine
    #: the projection writing into the replay's target tables
    target: UserProjection
    #: the name of the replay's progress rows in `projection_checkpoints`
    book: str
    head: Cursor
    batch_size: int
    #: write the folded rows once this many streams are folded
    flush_streams: int


#: connections reading the log at once on PostgreSQL: one reads while the other's results are
#: folded, so the folder seldom waits on a round trip
READERS = 2


async def bulk_shards(job: BulkJob, shards: list[int], count: Callable[[int], None]) -> None:
    """Read, fold and write `shards` up to the job's head, counting the events read with
    `count`."""
    with gc_paused():
        await _bulk_shards(job, shards, count)


async def _bulk_shards(job: BulkJob, shards: list[int], count: Callable[[int], None]) -> None:
    # reading runs ahead of folding and writing (bounded queue): the database reads the
    # next shards while this process folds and the previous group is written
    readers = READERS if job.engine.dialect.name == "postgresql" else 1
    queue: asyncio.Queue[ShardBatch | None] = asyncio.Queue(2 * readers + 2)
    reader = asyncio.create_task(
        read_shards(job.engine, shards, job.head, job.batch_size, queue, readers=readers)
    )
    writing: asyncio.Task[None] | None = None
    try:
        changes: dict[uuid.UUID, StreamChange] = {}
        # the shards being read, folded apart until they end (their batches may interleave)
        folding: dict[int, dict[uuid.UUID, StreamChange]] = {}
        pending: list[int] = []
        while (item := await _next(queue, reader)) is not None:
            shard, chunk, keys = item
            if chunk is not None:
                into = folding.get(shard)
                if into is None:
                    into = folding[shard] = {}
                job.target.fold_rows(into, chunk, crypto_of(job.engine), keys)
                count(len(chunk))
                continue
            # streams never span shards: a finished shard's changes join the group as they are
            changes.update(folding.pop(shard, {}))
            pending.append(shard)
            if len(changes) >= job.flush_streams:
                # one group is written while the next one folds
                if writing is not None:
                    await writing
                writing = asyncio.create_task(_flush(job, changes, pending))
                changes, pending = {}, []
        if writing is not None:
            await writing
        await _flush(job, changes, pending)
        await reader
    finally:
        reader.cancel()
        if writing is not None:
            writing.cancel()


class _GcPause:
    """The cyclic garbage collector paused while any bulk phase of this process runs (and as
    it was before once the last one ends).

    The bulk phase makes millions of objects (records, payloads, rows) and keeps hundreds of
    thousands alive at once (a group's folded streams), none in a reference cycle: each
    collection the allocations set off walks all of them and frees nothing, a third of the
    phase's time. Reference counting frees what the phase drops, as with the collector on."""

    def __init__(self) -> None:
        self.running = 0
        self.was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.running == 0:
            self.was_enabled = gc.isenabled()
            gc.disable()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self.running == 0 and self.was_enabled:
                gc.enable()


gc_paused = _GcPause()


async def _next(
    queue: asyncio.Queue[ShardBatch | None], reader: asyncio.Task[None]
) -> ShardBatch | None:
    """The reader's next batch; the reader's error if it failed (instead of waiting on)."""
    if not queue.empty() or not reader.done():
        getting = asyncio.ensure_future(queue.get())
        await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        getting.cancel()
    reader.result()  # raises the reader's error
    return queue.get_nowait() if not queue.empty() else None


async def _flush(job: BulkJob, changes: dict[uuid.UUID, StreamChange], shards: list[int]) -> None:
    if not shards:
        return
    async with job.engine.begin() as conn:
        # the progress rows first: this begins the transaction the COPY then joins
        await conn.execute(
            cp.update()
            .where(cp.c.name == job.book, cp.c.partition.in_(shards))
            .values(tx_id=job.head.tx_id, position=job.head.position, updated_at=utcnow())
        )
        as_datetimes(changes.values())
        await job.target.write(conn, changes.values(), copy=True)
