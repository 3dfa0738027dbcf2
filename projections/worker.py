"""Checkpointed subscribers: read the log after a checkpoint in batches, hand each batch to a
subscriber, and commit what it wrote together with the new checkpoint.

Work is split into partitions (sets of shards, so each stream's events stay in order); one
lease per partition. Several workers (tasks or processes) share the partitions fairly and take
over the partitions of one that died once its lease expires. The user projection and the bus
event relay both run on this machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import Cursor, EventStore, RecordedEvent
from events.notify import Wakeup
from events.scope import scope_of
from projections import failures, leases
from projections.poison import PoisonHandling, Suspect
from projections.sharing import PartitionSharing
from projections.signals import APPLIED, PROJECTIONS_CHANNEL, projection_wakeup
from projections.waiting import wait_for_version

#: after a commit wake-up that found nothing readable yet (on PostgreSQL an older transaction
#: still running holds the read horizon back), look again after at least this long, then
#: after a quarter of the time since the wake-up, for this long, instead of sleeping until
#: the next wake-up or the slow poll
HORIZON_RECHECK_INTERVAL = 0.005
HORIZON_RECHECK_WINDOW = 0.5
#: after a batch that took everything there was, the next one starts this much later at the
#: earliest: under a steady stream of commits a batch carries all of them meanwhile, instead
#: of one batch (and its reads) per commit; the first commit after a quiet spell goes at once
BATCH_GAP = 0.01
#: how long shutting down waits for the batch in progress before cancelling it, seconds
STOP_TIMEOUT = 5.0
#: attempts at one event before its partition is marked failed (None: never, back off forever)
MAX_ATTEMPTS = 5
#: the wait before the second attempt, doubled for each further one up to RETRY_BACKOFF_MAX
RETRY_BACKOFF = 0.5
RETRY_BACKOFF_MAX = 30.0

__all__ = ["ProjectionWorker", "Subscriber", "wait_for_version"]

log = logging.getLogger("registry.projections")


class Subscriber(Protocol):
    """Anything that consumes the log in order, exactly once in effect: `handle` runs inside
    the transaction that then commits the checkpoint (raise to have the batch retried)."""

    name: str

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None: ...


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ProjectionWorker(PoisonHandling, PartitionSharing):
    """Runs one subscriber over the partitions whose leases it holds, until cancelled.

    A batch that fails is retried partition by partition, then in halves, down to the one
    event that fails (`_isolate`); that partition waits (exponential backoff, capped) while the
    others go on, and after `max_attempts` failures on the same event it is marked failed in
    `projection_failures` (`projections.failures`) and left alone until an operator retries or
    skips the event. A lost database connection is not the event's fault: everything waits
    (with the same backoff) and no attempt is counted."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: EventStore,
        subscriber: Subscriber,
        *,
        partitions: int = 4,
        batch_size: int = 500,
        lease_ttl: float = 5.0,
        worker_id: str | None = None,
        listen: bool = True,
        max_attempts: int | None = MAX_ATTEMPTS,
        retry_backoff: float = RETRY_BACKOFF,
        retry_backoff_max: float = RETRY_BACKOFF_MAX,
    ) -> None:
        self.engine = engine
        self.store = store
        self.subscriber = subscriber
        self.name = subscriber.name
        self.partitions = partitions
        self.batch_size = batch_size
        self.lease_ttl = lease_ttl
        self.worker_id = worker_id or default_worker_id()
        self.listen = listen
        self.held: set[int] = set()
        #: the checkpoint of each held partition as this worker last committed it (a batch
        #: checks it under lock before writing, so a stale one only costs a re-read)
        self._cursors: dict[int, Cursor] = {}
        self.applied = 0
        #: the task running `run()`, when started by `registry.adapter.projector.run_projector`
        self.task: asyncio.Task[None] | None = None
        #: set once the worker has taken its first share of partitions
        self.ready = asyncio.Event()
        self._dirty = asyncio.Event()
        #: set by `stop()`: the loop ends between batches (no transaction is cut short)
        self._stopping = False
        self._woken_at = 0.0
        #: where the database signals each commit that appends, once (PostgreSQL's NOTIFY,
        #: this process's commits included): the worker waits on that alone, since the
        #: in-process signal of the same commit would wake it a second time for nothing
        self._heard = Wakeup()
        self._hears_all = False
        #: no batch before this (`BATCH_GAP`); whether every batch of the round was partial
        self._calm_until = 0.0
        self._drained = True
        #: the last wake-up a round began after and then found events for: no need to look
        #: again for it
        self._answered_at = 0.0
        self._is_pg = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._shards = {p: leases.shards_of(p, partitions) for p in range(partitions)}
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.failed: dict[int, failures.Failure] = {}
        self._suspects: dict[int, Suspect] = {}
        self._outages = 0
        self._resume_at = 0.0
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Project until cancelled; on the way out the leases are released."""
        async with contextlib.AsyncExitStack() as stack:
            if self.listen:
                self._hears_all = await stack.enter_async_context(self.store.listening(self._heard))
            forward = asyncio.create_task(self._forward_wakeups(), name=f"{self.name}-wakeups")
            stack.callback(forward.cancel)
            for attempt in range(5):  # workers starting together race to create the rows
                try:
                    async with self.engine.begin() as conn:
                        await leases.ensure_partitions(conn, self.name, self.partitions)
                    break
                except (SQLAlchemyError, OSError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            log.info(
                "projector started",
                extra={
                    "projection": self.name,
                    "worker": self.worker_id,
                    "partitions": self.partitions,
                    "batch_size": self.batch_size,
                },
            )
            try:
                await self._loop()
            finally:
                await asyncio.shield(self._leave())

    async def _loop(self) -> None:
        interval = self.lease_ttl / 3
        next_maintenance = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now < self._resume_at:  # the database was lost: wait before trying again
                await _wait(self._stopped, self._resume_at - now)
                continue
            if now >= next_maintenance:
                try:
                    await self._maintain()
                except Exception:  # whatever failed, the next round tries again
                    log.exception("lease maintenance failed", extra={"projection": self.name})
                next_maintenance = now + interval
            if now < self._calm_until:
                await _wait(self._stopped, self._calm_until - now)
            self._dirty.clear()
            woken = self._woken_at
            self._drained = True
            progressed = await self._apply_held()
            progressed = await self._try_due() or progressed
            if progressed:
                self._answered_at = woken
                if self._drained:
                    self._calm_until = time.monotonic() + BATCH_GAP
            if not progressed:
                await _wait(self._dirty, self._idle_timeout(next_maintenance))

    async def _apply_held(self) -> bool:
        """A batch of each group of the held partitions; whether anything happened."""
        progressed = False
        # PostgreSQL: every held partition in one batch (one transaction); SQLite has one
        # writer at a time anyway: a partition per batch keeps each write lock short.
        # Failed and waiting partitions stay out: they must not hold the others back.
        held = sorted(self.held - set(self.failed) - set(self._suspects))
        groups = [held] if self._is_pg and held else [[p] for p in held]
        for group in groups:
            if self._stopping or time.monotonic() < self._resume_at:
                break
            try:
                progressed = await self.run_batches(group) > 0 or progressed
            except Exception as exc:  # noqa: BLE001 a subscriber may raise anything: find the event
                await self._recover(group, exc)
                progressed = True
            else:
                self._back_online()
        return progressed

    async def _try_due(self) -> bool:
        """The next attempt at each waiting partition that is due; whether there was one."""
        progressed = False
        for partition in self._due():
            if self._stopping or time.monotonic() < self._resume_at:
                break
            await self._try_again(partition)
            progressed = True
        return progressed

    def _idle_timeout(self, next_maintenance: float) -> float:
        """How long an idle round may wait for a wake-up: until the next maintenance, the
        next due retry, or (shortly after a wake-up) the next look at the read horizon,
        whichever comes first."""
        now = time.monotonic()
        timeout = max(0.0, next_maintenance - now)
        if self._suspects:
            due = min(s.due for s in self._suspects.values())
            timeout = min(timeout, max(0.0, due - now))
        since = now - self._woken_at
        if self._is_pg and self._woken_at > self._answered_at and since < HORIZON_RECHECK_WINDOW:
            timeout = min(timeout, max(HORIZON_RECHECK_INTERVAL, since / 4))
        return timeout

    def stop(self) -> None:
        """Ask `run` to return after the batch in progress (then it releases its leases)."""
        self._stopping = True
        self._dirty.set()
        self._stopped.set()

    async def shut_down(self, task: asyncio.Task[None], *, grace: float) -> bool:
        """End `task` (running `run`): asked to stop after the batch in progress (a batch cut
        short is rolled back and done again, by whoever holds its partitions next), cancelled
        if it has not within STOP_TIMEOUT, then given at most `grace` seconds for its clean-up
        (the lease release; an unreleased lease simply expires). False when it did not end.

        Cancelled once only: a second cancel landing in the clean-up of a batch's connection
        would abandon its rollback. `run` waits with `asyncio.timeout`, which never swallows a
        cancellation."""
        self.stop()
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=grace)
        return bool(done)

    async def _forward_wakeups(self) -> None:
        # the store's wait returns on a commit signal or after its slow poll: either way,
        # look again (a missed NOTIFY, or a writer in another process on SQLite)
        while True:
            if self._hears_all:
                woken = await self._heard.wait(self.store.slow_poll)
            else:
                woken = await self.store.wait_for_events(3600)
            if woken:
                self._woken_at = time.monotonic()
            self._dirty.set()

    # ------------------------------------------------------------------ one batch
    async def run_batches(self, partitions: Sequence[int], *, limit: int | None = None) -> int:
        """Apply the next batch of these partitions' events in one transaction: up to
        `batch_size` events in log order, each after its partition's checkpoint, and the
        checkpoints moved with what the subscriber wrote. Returns the number of events applied
        (0: caught up). A partition whose lease is no longer ours is dropped from `held` and
        from the batch (nothing of it is committed); one whose checkpoint another worker moved
        is read again next time.

        On PostgreSQL the events are read outside a transaction (the checkpoints are checked
        again under lock before anything is written); then the batch takes the same round
        trips whatever the number of partitions: begin, renew the leases and lock the
        checkpoints, the subscriber's load and write, move the checkpoints and notify, commit.
        A batch that this process's writers projected already (`projections.signals.Applied`)
        is one statement instead. `limit`: fewer events than `batch_size` (narrowing a failure
        down to one event)."""
        started = time.perf_counter()
        if self._is_pg:
            async with self._autocommit.connect() as conn:
                cursors, batch = await self._read(conn, partitions, limit)
                if batch and scope_of(self.engine).get(APPLIED).take(self.name, batch):
                    return await self._advance_applied(conn, cursors, batch, started)
            if not batch:
                return 0
            async with self.engine.connect() as conn:
                return await self._write(conn, cursors, batch, started)
        async with self.engine.connect() as conn:
            cursors, batch = await self._read(conn, partitions, limit)
            if not batch:
                await conn.rollback()
                return 0
            return await self._write(conn, cursors, batch, started)

    async def _read(
        self, conn: AsyncConnection, partitions: Sequence[int], limit: int | None
    ) -> tuple[dict[int, Cursor], list[RecordedEvent]]:
        """The partitions' checkpoints as this worker knows them, and the events after them."""
        cursors: dict[int, Cursor] = {}
        for partition in partitions:
            at = self._cursors.get(partition)
            if at is None:
                at = await leases.read_checkpoint(conn, self.name, partition)
                if at is None:
                    self._lose(partition, "no checkpoint row")
                    continue
                self._cursors[partition] = at
            cursors[partition] = at
        if not cursors:
            return cursors, []
        batch = await self.store.read_after_each(
            [(at, self._shards[p]) for p, at in cursors.items()],
            limit=limit or self.batch_size,
            conn=conn,
        )
        return cursors, batch

    async def _write(
        self,
        conn: AsyncConnection,
        cursors: dict[int, Cursor],
        batch: list[RecordedEvent],
        started: float,
    ) -> int:
        """The batch's transaction on `conn`: leases renewed and checkpoints checked, the
        subscriber's writes, the checkpoints moved; committed."""
        touched = sorted({e.shard % self.partitions for e in batch})
        # writes start here: the lease renewal is the transaction's first write
        ours = await leases.claim(conn, self.name, touched, self.worker_id, self.lease_ttl)
        keep = set()
        for partition in touched:
            if partition not in ours:
                self._lose(partition, "lease lost")
            elif ours[partition] != cursors[partition]:
                self._cursors.pop(partition, None)  # moved by someone else: read again
            else:
                keep.add(partition)
        if len(keep) < len(touched):
            batch = [e for e in batch if e.shard % self.partitions in keep]
            if not batch:
                await conn.rollback()
                return 1 if len(ours) > len(keep) else 0  # moved: look again now
        await self.subscriber.handle(conn, batch)
        moved = {e.shard % self.partitions: e.cursor for e in batch}
        await leases.advance(conn, self.name, moved, notify=PROJECTIONS_CHANNEL)
        await conn.commit()
        self._done(moved, batch, started)
        return len(batch)

    async def _advance_applied(
        self,
        conn: AsyncConnection,
        cursors: dict[int, Cursor],
        batch: list[RecordedEvent],
        started: float,
    ) -> int:
        """A batch its writers projected already: only the checkpoints move, in one statement
        on `conn` (autocommit); a partition that did not move (lease lost, or checkpoint moved
        by another worker) is read again, and the next batch finds out which."""
        moved = {e.shard % self.partitions: e.cursor for e in batch}
        done = await leases.advance_held(
            conn,
            self.name,
            self.worker_id,
            self.lease_ttl,
            {p: (cursors[p], at) for p, at in moved.items()},
            notify=PROJECTIONS_CHANNEL,
        )
        for partition in set(moved) - done:
            self._cursors.pop(partition, None)
        moved = {p: at for p, at in moved.items() if p in done}
        if moved:
            self._done(moved, [e for e in batch if e.shard % self.partitions in done], started)
        return len(batch)

    def _done(self, moved: dict[int, Cursor], batch: list[RecordedEvent], started: float) -> None:
        self._cursors.update(moved)
        if len(batch) >= self.batch_size:
            self._drained = False
        projection_wakeup(self.engine).notify()
        self.applied += len(batch)
        lag = (datetime.now(UTC) - batch[-1].recorded_at).total_seconds()
        log.log(
            logging.INFO if len(batch) >= self.batch_size else logging.DEBUG,
            "batch applied",
            extra={
                "projection": self.name,
                "partitions": sorted(moved),
                "events": len(batch),
                "position": batch[-1].position,
                "lag_seconds": round(lag, 3),
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _lose(self, partition: int, why: str) -> None:
        self.held.discard(partition)
        self._cursors.pop(partition, None)
        self._suspects.pop(partition, None)
        log.warning(why, extra={"projection": self.name, "partition": partition})


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds have passed."""
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
