"""Wake-ups for read-your-writes waiters: in-process after a projector commits, and across
processes on PostgreSQL through NOTIFY on `registry_projections`. Their per-engine state lives
in the engine's scope (`events.scope`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from events.engine import asyncpg_dsn
from events.notify import Wakeup, pg_listening
from events.scope import Slot, scope_of

PROJECTIONS_CHANNEL = "registry_projections"


@dataclass
class ProjectionSignals:
    """One engine's projector commit signal, and how many LISTEN connections feed it."""

    wakeup: Wakeup = field(default_factory=Wakeup)
    listening: int = 0


SIGNALS = Slot("projection signals", ProjectionSignals)


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
