"""How projector workers share partitions: each heartbeats, renews its leases, and takes or
gives partitions towards a fair share; on the way out it releases them.

Each step is its own short transaction touching one lease row at a time (or several in
ascending order), so that workers maintaining at once cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from sqlalchemy.ext.asyncio import AsyncEngine

from events import Cursor
from projections import leases

log = logging.getLogger("registry.projections")


class PartitionSharing:
    """The lease half of `ProjectionWorker` (mixed into it after `PoisonHandling`; the
    attributes below are the worker's)."""

    engine: AsyncEngine
    name: str
    worker_id: str
    partitions: int
    lease_ttl: float
    held: set[int]
    ready: asyncio.Event
    _cursors: dict[int, Cursor]
    _dirty: asyncio.Event

    async def _read_failures(self, partitions: set[int]) -> None:
        raise NotImplementedError

    async def _maintain(self) -> None:
        """Heartbeat, renew our leases, and take or give partitions towards a fair share."""
        async with self.engine.begin() as conn:
            members = await leases.heartbeat(conn, self.name, self.worker_id, self.lease_ttl)
        fair = math.ceil(self.partitions / max(members, 1))
        kept = set()
        async with self.engine.begin() as conn:
            for p in sorted(self.held):
                if await leases.renew(conn, self.name, p, self.worker_id, self.lease_ttl):
                    kept.add(p)
            extra = sorted(kept)[fair:]
            if extra:
                await leases.release(conn, self.name, extra, self.worker_id)
                kept -= set(extra)
        gained = []
        offset = hash(self.worker_id) % self.partitions
        for i in range(self.partitions):
            if len(kept) >= fair:
                break
            p = (offset + i) % self.partitions
            if p in kept:
                continue
            async with self.engine.begin() as conn:
                if await leases.acquire(conn, self.name, p, self.worker_id, self.lease_ttl):
                    kept.add(p)
                    gained.append(p)
        if gained or extra or kept != self.held:
            log.info(
                "partitions assigned",
                extra={
                    "projection": self.name,
                    "worker": self.worker_id,
                    "held": sorted(kept),
                    "gained": gained,
                    "released": extra,
                    "workers": members,
                },
            )
        if gained:
            self._dirty.set()
        for p in set(self._cursors) - (kept - set(gained)):
            del self._cursors[p]  # read a gained partition's checkpoint afresh
        await self._read_failures(kept)
        self.held = kept
        self.ready.set()

    async def _leave(self) -> None:
        # bounded, and never an error on the way out: whatever fails here (a busy or lost
        # database, a timeout), the leases simply expire (lease_ttl)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.lease_ttl, 3.0)), self.engine.begin() as conn:
                await leases.release(conn, self.name, sorted(self.held), self.worker_id)
                await leases.leave(conn, self.name, self.worker_id)
        self.held.clear()
        log.info("projector stopped", extra={"projection": self.name, "worker": self.worker_id})
