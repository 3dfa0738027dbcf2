"""Operations behind the CLI commands that read or change the whole registry, each on an engine
opened for it by the composition root (`registry.bootstrap.database`)."""

from __future__ import annotations

import getpass
import socket
from typing import Any

from events import EventStore
from projections import failures
from projections.status import projection_skips, projection_status
from registry.bootstrap import database
from registry.schema import require_registry
from registry.settings import Settings


async def gather_status(settings: Settings) -> dict[str, Any]:
    """Event count and head position, plus projection checkpoints (and failures, skips) when
    they exist."""
    async with database(settings) as engine:
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
    # no login name: a uid without a passwd entry (a container's), or no `pwd` module; Python
    # 3.13 raises OSError for both
    except (KeyError, OSError, ImportError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def retry_failed(
    settings: Settings, projection: str | None = None, partition: int | None = None
) -> list[dict[str, Any]]:
    """Clear the failed partitions (of `projection`, `partition`): their projector tries the
    event again within a lease renewal. Returns the failures cleared."""
    async with database(settings) as engine, engine.begin() as conn:
        return [f.as_dict() for f in await failures.clear(conn, projection, partition)]


async def pending_event(settings: Settings, projection: str, partition: int) -> dict[str, Any]:
    """The event `projection`'s `partition` applies next (what a skip would skip), with the
    failure recorded for it if any. Raises ProjectionError when there is none."""
    async with database(settings) as engine, engine.connect() as conn:
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
    async with database(settings) as engine, engine.begin() as conn:
        record = await failures.skip(conn, projection, partition, position, by=by, note=note)
    return record.as_dict()
