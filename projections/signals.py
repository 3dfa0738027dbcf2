"""Wake-ups for read-your-writes waiters: in-process after a projector commits, and across
processes on PostgreSQL through NOTIFY on `registry_projections`. Their per-engine state lives
in the engine's scope (`events.scope`)."""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from events.engine import asyncpg_dsn
from events.envelope import RecordedEvent
from events.notify import Wakeup, pg_listening
from events.scope import Slot, scope_of

PROJECTIONS_CHANNEL = "registry_projections"


@dataclass
class ProjectionSignals:
    """One engine's projector commit signal, and how many LISTEN connections feed it."""

    wakeup: Wakeup = field(default_factory=Wakeup)
    listening: int = 0


SIGNALS = Slot("projection signals", ProjectionSignals)


#: at most this many event ids are remembered per projection (the oldest are forgotten first:
#: the worker then projects those events again, which changes nothing)
APPLIED_LIMIT = 10_000


class Applied:
    """Events that writers of this process projected in the transaction that appended them
    (worker mode's fast path), once that transaction committed: ids by projection name. The
    worker finds them in its next batch and only moves its checkpoint past them."""

    def __init__(self) -> None:
        self._ids: dict[str, OrderedDict[uuid.UUID, None]] = {}

    def add(self, name: str, event_ids: Iterable[uuid.UUID]) -> None:
        ids = self._ids.setdefault(name, OrderedDict())
        for event_id in event_ids:
            ids[event_id] = None
        while len(ids) > APPLIED_LIMIT:
            ids.popitem(last=False)

    def take(self, name: str, batch: Sequence[RecordedEvent]) -> bool:
        """True (and forgotten) when every event of `batch` was projected by its writer."""
        ids = self._ids.get(name)
        if not ids or not all(e.event_id in ids for e in batch):
            return False
        for e in batch:
            del ids[e.event_id]
        return True


APPLIED = Slot("events projected by their writers", Applied)


def projection_wakeup(engine: AsyncEngine) -> Wakeup:
    """The signal notified whenever a projector on this engine commits a batch."""
    return scope_of(engine).get(SIGNALS).wakeup


def is_listening(engine: AsyncEngine) -> bool:
    return scope_of(engine).get(SIGNALS).listening > 0


@contextlib.asynccontextmanager
async def projections_listening(engine: AsyncEngine) -> AsyncIterator[None]:
    """While open, projector commits in other processes wake this process's waiters
    (PostgreSQL only; elsewhere waiters poll)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    signals = scope_of(engine).get(SIGNALS)
    async with pg_listening(asyncpg_dsn(engine.url), {PROJECTIONS_CHANNEL: signals.wakeup}):
        signals.listening += 1
        try:
            yield
        finally:
            signals.listening -= 1
