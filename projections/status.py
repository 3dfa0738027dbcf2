"""Where each projection partition stands: checkpoint, log head, lag, who holds it, and
whether it stopped on an event it cannot apply (and the events operators skipped)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, inspect, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import EventStore
from events.tables import events
from projections import failures, leases
from projections.generations import NEXT
from projections.tables import projection_checkpoints, projection_failures, projection_leases


@dataclass(frozen=True)
class PartitionStatus:
    name: str
    partition: int
    partitions: int
    tx_id: int
    position: int
    head_position: int
    lag_events: int
    lag_seconds: float | None  # age of the oldest event not yet applied; 0 when caught up
    holder: str | None  # the worker holding a live lease, if any
    lease_expires_at: datetime | None
    updated_at: datetime | None
    #: "failed": stopped on an event it cannot apply (see `failure`), until retried or skipped
    state: str = "ok"
    #: the event it stopped on (position, tx_id, stream_id, stream_version, event_type), the
    #: reason, attempts, failed_at; None unless failed
    failure: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_tables(sync_conn: Connection) -> bool:
    return bool(inspect(sync_conn).has_table(projection_checkpoints.name))


def _has_failure_tables(sync_conn: Connection) -> bool:
    # a database not yet migrated to them has no failures to show
    return bool(inspect(sync_conn).has_table(projection_failures.name))


async def projection_status(engine: AsyncEngine, store: EventStore) -> list[PartitionStatus]:
    """One entry per projection and partition (empty before any projector ran)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(_has_tables):
            return []
        head = await store.head(conn=conn)
        return await _statuses(conn, head.position)


async def projection_skips(engine: AsyncEngine) -> list[failures.Skip]:
    """Every event an operator skipped (`registry projections skip`), oldest first."""
    async with engine.connect() as conn:
        if not await conn.run_sync(_has_failure_tables):
            return []
        return await failures.skipped(conn)


async def _statuses(conn: AsyncConnection, head_position: int) -> list[PartitionStatus]:
    cp, ls = projection_checkpoints, projection_leases
    now = await conn.scalar(select(leases.db_now(conn)))
    rows = await conn.execute(
        select(cp, ls.c.holder, ls.c.expires_at)
        .outerjoin(ls, (ls.c.name == cp.c.name) & (ls.c.partition == cp.c.partition))
        .order_by(cp.c.name, cp.c.partition)
    )
    failed: dict[tuple[str, int], failures.Failure] = {}
    if await conn.run_sync(_has_failure_tables):
        failed = {(f.name, f.partition): f for f in await failures.failed(conn)}
    found = []
    for r in rows.all():
        if r.name.endswith(NEXT):  # a replay's own progress rows
            continue
        after = tuple_(events.c.tx_id, events.c.position) > tuple_(r.tx_id, r.position)
        stmt = select(func.count(), func.min(events.c.recorded_at)).where(after)
        if r.partitions > 1:
            stmt = stmt.where(events.c.shard.in_(leases.shards_of(r.partition, r.partitions)))
        count, oldest = (await conn.execute(stmt)).one()
        if isinstance(oldest, str):  # SQLite aggregates lose the column type
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        live = r.holder is not None and r.expires_at is not None and r.expires_at > now
        found.append(
            PartitionStatus(
                name=r.name,
                partition=r.partition,
                partitions=r.partitions,
                tx_id=r.tx_id,
                position=r.position,
                head_position=head_position,
                lag_events=int(count),
                lag_seconds=(datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0,
                holder=r.holder if live else None,
                lease_expires_at=datetime.fromtimestamp(r.expires_at, UTC) if live else None,
                updated_at=r.updated_at,
                state="failed" if (r.name, r.partition) in failed else "ok",
                failure=_failure_info(failed.get((r.name, r.partition))),
            )
        )
    return found


def _failure_info(failure: failures.Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    info = failure.as_dict()
    del info["name"], info["partition"]
    return info
