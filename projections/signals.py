"""Wake-ups for read-your-writes waiters: in-process after a projector commits, and across
processes on PostgreSQL through NOTIFY on `registry_projections`."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events.engine import asyncpg_dsn
from events.notify import Wakeup, pg_listening

PROJECTIONS_CHANNEL = "registry_projections"

_wakeups: weakref.WeakKeyDictionary[Any, Wakeup] = weakref.WeakKeyDictionary()
_listening: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def projection_wakeup(engine: AsyncEngine) -> Wakeup:
    """The signal notified whenever a projector on this engine commits a batch."""
    key = engine.sync_engine
    wakeup = _wakeups.get(key)
    if wakeup is None:
        wakeup = _wakeups[key] = Wakeup()
    return wakeup


def is_listening(engine: AsyncEngine) -> bool:
    return _listening.get(engine.sync_engine, 0) > 0


@contextlib.asynccontextmanager
async def projections_listening(engine: AsyncEngine) -> AsyncIterator[None]:
    """While open, projector commits in other processes wake this process's waiters
    (PostgreSQL only; elsewhere waiters poll)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    key = engine.sync_engine
    channels = {PROJECTIONS_CHANNEL: projection_wakeup(engine)}
    async with pg_listening(asyncpg_dsn(engine.url), channels):
        _listening[key] = _listening.get(key, 0) + 1
        try:
            yield
        finally:
            _listening[key] -= 1
