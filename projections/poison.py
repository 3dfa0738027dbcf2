"""What a projector does when a batch fails: find the one event at fault, let the partition
wait (exponential backoff, capped) while the others go on, and after `max_attempts` on the same
event mark the partition failed (`projections.failures`) until an operator retries or skips.

A lost database connection is nobody's fault: the whole worker pauses (same backoff), and no
attempt is counted against an event. Each change of state is logged once: the first failure of
an event, the partition marked failed, recovered, cleared by an operator; retries in between
are not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events import Cursor
from events.connectivity import connection_lost
from projections import failures, leases

log = logging.getLogger("registry.projections")


@dataclass
class Suspect:
    """A partition whose next event failed `attempts` times; tried again at `due` (monotonic
    time), alone and one event at a time."""

    position: int
    attempts: int
    due: float


class PoisonHandling:
    """The failure half of `ProjectionWorker` (mixed into it; the attributes below are its)."""

    engine: AsyncEngine
    name: str
    worker_id: str
    batch_size: int
    lease_ttl: float
    held: set[int]
    max_attempts: int | None
    retry_backoff: float
    retry_backoff_max: float
    #: held partitions marked failed in the database (read at each lease maintenance)
    failed: dict[int, failures.Failure]
    _suspects: dict[int, Suspect]
    _cursors: dict[int, Cursor]
    _shards: dict[int, list[int]]
    #: consecutive pauses for a lost database, and when to try it again (monotonic time)
    _outages: int
    _resume_at: float
    _stopping: bool
    _dirty: asyncio.Event

    async def run_batches(self, partitions: Sequence[int], *, limit: int | None = None) -> int:
        raise NotImplementedError

    def _lose(self, partition: int, why: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ scheduling
    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_backoff * 2 ** max(attempts - 1, 0), self.retry_backoff_max))

    def _due(self) -> list[int]:
        """Waiting partitions whose next attempt is due."""
        now = time.monotonic()
        return sorted(
            p
            for p, s in self._suspects.items()
            if s.due <= now and p in self.held and p not in self.failed
        )

    def _extra(self, partition: int, **more: object) -> dict[str, object]:
        return {"projection": self.name, "partition": partition, "worker": self.worker_id, **more}

    # ------------------------------------------------------------------ a batch failed
    async def _recover(self, group: Sequence[int], exc: BaseException) -> None:
        """A batch of `group` failed with `exc`: narrow it down to the event at fault."""
        if connection_lost(exc):
            self._outage(exc)
            return
        try:
            for partition in group:
                if self._stopping:
                    break
                # a batch of one partition failed whole already: start with half of it
                first = self.batch_size if len(group) > 1 else self.batch_size // 2
                await self._isolate(partition, first)
        except Exception as err:  # noqa: BLE001 our own bookkeeping failed, whatever the cause: pause
            self._outage(err)

    async def _isolate(self, partition: int, limit: int) -> None:
        """Apply `partition` alone in batches halved on each failure: a failing batch of one
        event names the event at fault. Back to normal once a full batch's worth applied."""
        limit, applied = max(1, limit), 0
        while not self._stopping and partition in self.held:
            try:
                done = await self.run_batches([partition], limit=limit)
            except Exception as exc:  # a subscriber may raise anything
                if connection_lost(exc):
                    raise
                if limit == 1:
                    await self._suspect(partition, exc)
                    return
                limit = max(1, limit // 2)
                continue
            applied += done
            if done == 0 or applied >= self.batch_size:
                return  # caught up, or the failure did not come back

    async def _suspect(self, partition: int, exc: BaseException) -> None:
        """The next event of `partition` failed with `exc`: count the attempt, and wait or
        mark the partition failed."""
        reason = failures.describe(exc)
        self._cursors.pop(partition, None)
        async with self.engine.connect() as conn:
            at = await leases.read_checkpoint(conn, self.name, partition)
            ref = None
            if at is not None:
                ref = await failures.next_event(conn, at, self._shards[partition])
        if at is None:
            self._lose(partition, "no checkpoint row")
            return
        position = ref.position if ref else at.position
        prior = self._suspects.get(partition)
        same = prior is not None and prior.position == position
        attempts = prior.attempts + 1 if prior is not None and same else 1
        extra = self._extra(
            partition,
            position=position,
            stream_id=str(ref.stream_id) if ref else None,
            stream_version=ref.stream_version if ref else None,
            event_type=ref.event_type if ref else None,
            reason=reason,
            attempts=attempts,
        )
        if self.max_attempts is not None and attempts >= self.max_attempts:
            await self._fail(partition, ref, at, reason, attempts, extra)
            return
        delay = self._backoff(attempts)
        self._suspects[partition] = Suspect(position, attempts, time.monotonic() + delay)
        if attempts == 1:
            log.warning(
                "event failed; its partition waits and tries again (the others go on)",
                extra={**extra, "retry_in": delay, "max_attempts": self.max_attempts},
            )

    async def _fail(
        self,
        partition: int,
        ref: failures.EventRef | None,
        at: Cursor,
        reason: str,
        attempts: int,
        extra: dict[str, Any],
    ) -> None:
        async with self.engine.begin() as conn:
            if not await leases.renew(conn, self.name, partition, self.worker_id, self.lease_ttl):
                self._lose(partition, "lease lost")
                return
            failure = await failures.mark(
                conn, self.name, partition, ref, at, reason, attempts, self.worker_id
            )
        self._suspects.pop(partition, None)
        self.failed[partition] = failure
        log.error(
            "partition failed: an event cannot be applied; it waits for "
            "`registry projections retry` or `registry projections skip`",
            extra=extra,
        )

    async def _try_again(self, partition: int) -> None:
        """The next attempt at a waiting partition's event (alone, one event)."""
        suspect = self._suspects.get(partition)
        try:
            await self.run_batches([partition], limit=1)
        except Exception as exc:  # noqa: BLE001 a subscriber may raise anything
            if connection_lost(exc):
                self._outage(exc)
                return
            try:
                await self._suspect(partition, exc)
            except Exception as err:  # noqa: BLE001 our own bookkeeping failed, whatever the cause: pause
                self._outage(err)
            return
        self._back_online()
        if self._suspects.pop(partition, None) is not None and suspect is not None:
            log.info(
                "partition recovered: its event applied",
                extra=self._extra(partition, position=suspect.position, attempts=suspect.attempts),
            )

    # ------------------------------------------------------------------ the database
    def _outage(self, exc: BaseException) -> None:
        """Pause the whole worker: the database is unreachable (or our bookkeeping failed)."""
        self._outages += 1
        delay = self._backoff(self._outages)
        self._resume_at = time.monotonic() + delay
        if self._outages == 1:
            lost = connection_lost(exc)
            log.warning(
                "database connection lost; projecting again after a pause"
                if lost
                else "projector failed outside a batch; trying again after a pause",
                extra={"projection": self.name, "reason": failures.describe(exc)},
            )

    def _back_online(self) -> None:
        if self._outages:
            log.info("projecting again", extra={"projection": self.name})
            self._outages = 0

    async def _read_failures(self, partitions: set[int]) -> None:
        """Learn which of `partitions` are marked failed; one an operator cleared (retry,
        skip) is projected again from its stored checkpoint."""
        found: dict[int, failures.Failure] = {}
        if partitions:
            async with self.engine.connect() as conn:
                rows = await failures.failed(conn, self.name, sorted(partitions))
            found = {f.partition: f for f in rows}
        for partition in sorted(set(self.failed) - set(found)):
            self._cursors.pop(partition, None)
            if partition in partitions:
                log.info(
                    "partition failure cleared; projecting it again",
                    extra=self._extra(partition),
                )
                self._dirty.set()
        for partition in set(self._suspects) - (partitions - set(found)):
            del self._suspects[partition]
        self.failed = found
