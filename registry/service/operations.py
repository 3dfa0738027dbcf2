"""Operations behind the CLI commands that read or change the whole registry."""

from __future__ import annotations

import getpass
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine
from registry.schema import require_registry
from registry.settings import Settings


@asynccontextmanager
async def _engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database for one operation, disposed afterwards."""
    engine = create_engine(settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def gather_status(settings: Settings) -> dict[str, Any]:
    """Event count and head position, plus projection checkpoints (and failures, skips) when
    they exist."""
    from projections.status import projection_skips, projection_status

    async with _engine(settings) as engine:
        await require_registry(engine)  # a new directory: say what to run, create nothing
        store = EventStore(engine)
        head = await store.head()
        return {
            "events": {"count": head.count, "head_position": head.position},
            "projections": [s.as_dict() for s in await projection_status(engine, store)],
            "skipped": [s.as_dict() for s in await projection_skips(engine)],
        }


def operator() -> str:
    """Who is running this command, for the record of a skip: user@host."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without one)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def retry_failed(
    settings: Settings, projection: str | None = None, partition: int | None = None
) -> list[dict[str, Any]]:
    """Clear the failed partitions (of `projection`, `partition`): their projector tries the
    event again within a lease renewal. Returns the failures cleared."""
    from projections import failures

    async with _engine(settings) as engine, engine.begin() as conn:
        return [f.as_dict() for f in await failures.clear(conn, projection, partition)]


async def pending_event(settings: Settings, projection: str, partition: int) -> dict[str, Any]:
    """The event `projection`'s `partition` applies next (what a skip would skip), with the
    failure recorded for it if any. Raises ProjectionError when there is none."""
    from projections import failures

    async with _engine(settings) as engine, engine.connect() as conn:
        _, ref = await failures.pending(conn, projection, partition)
        found = await failures.failed(conn, projection, [partition])
    return {
        "projection": projection,
        "partition": partition,
        "position": ref.position,
        "stream_id": str(ref.stream_id),
        "stream_version": ref.stream_version,
        "event_type": ref.event_type,
        "failure": found[0].as_dict() if found else None,
    }


async def skip_event(
    settings: Settings, projection: str, partition: int, position: int, *, by: str, note: str
) -> dict[str, Any]:
    """Skip exactly the event at `position` (the next one `partition` applies) and record it.
    Raises ProjectionError when that is not the partition's next event."""
    from projections import failures

    async with _engine(settings) as engine, engine.begin() as conn:
        record = await failures.skip(conn, projection, partition, position, by=by, note=note)
    return record.as_dict()
