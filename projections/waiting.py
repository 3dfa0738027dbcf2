"""Read-your-writes: wait until a projection reflects a stream version."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from projections import leases
from projections.errors import ProjectionTimeout
from projections.signals import is_listening, projection_wakeup
from projections.users import UserProjection, projected_version

#: how often a waiter looks again when no wake-up arrives
POLL_SECONDS = 0.05
POLL_SECONDS_LISTENING = 0.5


async def wait_for_version(
    engine: AsyncEngine,
    projection: UserProjection,
    stream_id: uuid.UUID,
    version: int,
    timeout: float,
) -> None:
    """Return once `projection` reflects `version` of the stream (or its deletion at or after
    it); raise `ProjectionTimeout` after `timeout` seconds, saying plainly when no projector
    holds a live lease."""
    sid = stream_id if isinstance(stream_id, uuid.UUID) else uuid.UUID(str(stream_id))
    wakeup = projection_wakeup(engine)
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            current = await projected_version(conn, projection, sid)
        if current >= version:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProjectionTimeout(
                await _explain(engine, projection, sid, version, current, timeout)
            )
        poll = POLL_SECONDS_LISTENING if is_listening(engine) else POLL_SECONDS
        await wakeup.wait(min(remaining, poll))


async def _explain(
    engine: AsyncEngine,
    projection: UserProjection,
    sid: uuid.UUID,
    version: int,
    current: int,
    timeout: float,
) -> str:
    name = projection.name
    head = (
        f"projection {name!r} did not reach version {version} of user {sid} within "
        f"{timeout:g}s (it is at {current})"
    )
    async with engine.connect() as conn:
        holders = await leases.live_holders(conn, name)
        partitions = await leases.partition_count(conn, name)
    if not holders:
        return (
            f"{head}: no projector is running (no worker holds a live lease on {name!r}; "
            "start `registry worker` or run the app with run_projector)"
        )
    if partitions:
        partition = leases.partition_of(sid, partitions)
        if partition not in holders:
            return (
                f"{head}: no projector holds partition {partition} of {name!r} "
                "(a worker died and its lease has not been taken over yet)"
            )
    return f"{head}: the projector is behind"


async def projector_holds(
    engine: AsyncEngine, projection: UserProjection, stream_id: uuid.UUID
) -> bool:
    """True when a projector holds a live lease on the partition of `stream_id` (it will
    project the stream's new events)."""
    async with engine.connect() as conn:
        partitions = await leases.partition_count(conn, projection.name)
        if not partitions:
            return False
        holders = await leases.live_holders(conn, projection.name)
    return leases.partition_of(stream_id, partitions) in holders


async def project_stream(
    engine: AsyncEngine, projection: UserProjection, stream_id: uuid.UUID
) -> None:
    """Bring one stream's rows up to the log in one transaction: for a writer that no
    projector serves. Safe beside a projector that starts meanwhile (applying is idempotent:
    each row carries the version it reflects). Leaves the checkpoints alone."""
    store = EventStore(engine)
    async with engine.begin() as conn:
        await projection.apply(conn, await store.read_stream(stream_id, conn=conn))
