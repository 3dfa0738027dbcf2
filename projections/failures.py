"""Poison events: a partition stopped on an event it cannot apply, and the operator's way out.

A projector that fails on the same event `max_attempts` times marks its partition failed
(`mark`): one row in `projection_failures` with the event's place and the reason. The partition
is left alone until an operator either retries it (`clear`: the failure goes, the projector
tries again) or skips exactly that event (`skip`: the checkpoint moves past it, a row in
`projection_skips` says who, when and why). Nothing is ever skipped silently.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Row, delete, literal, select, tuple_
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from events import Cursor
from events.tables import events
from projections import leases
from projections.errors import ProjectionError
from projections.tables import (
    projection_checkpoints,
    projection_failures,
    projection_skips,
    utcnow,
)

#: longest reason stored (the column's size)
REASON_CHARS = 1000
_DRIVER_CLASS = re.compile(r"^<class '(?:[\w]+\.)*(\w+)'>: ")


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, for storing and logging. A driver error is described
    by the driver's own exception, never by SQLAlchemy's text (which carries the statement and
    may carry its parameters); later lines (PostgreSQL's DETAIL: the failing row) are dropped."""
    inner: BaseException = exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        inner = exc.orig
    name = type(inner).__name__
    lines = str(inner).strip().splitlines()
    first = lines[0].strip() if lines else ""
    found = _DRIVER_CLASS.match(first)  # asyncpg through SQLAlchemy: "<class '...X'>: msg"
    if found:
        name, first = found.group(1), first[found.end() :]
    text = f"{name}: {first}" if first else name
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


@dataclass(frozen=True)
class EventRef:
    """Where an event is and what it is, read without decoding it (it may not decode)."""

    tx_id: int
    position: int
    stream_id: uuid.UUID
    stream_version: int
    event_type: str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.tx_id, self.position)


@dataclass(frozen=True)
class Failure:
    name: str
    partition: int
    tx_id: int
    position: int
    stream_id: uuid.UUID | None
    stream_version: int | None
    event_type: str | None
    reason: str
    attempts: int
    worker: str | None
    failed_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skip:
    name: str
    partition: int
    tx_id: int
    position: int
    stream_id: uuid.UUID
    stream_version: int
    event_type: str
    reason: str | None
    note: str
    skipped_by: str
    skipped_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def next_event(conn: AsyncConnection, after: Cursor, shards: list[int]) -> EventRef | None:
    """The first event of these shards after `after` in the projector's order (tx_id,
    position): the one a partition at checkpoint `after` applies next."""
    stmt = (
        select(
            events.c.tx_id,
            events.c.position,
            events.c.stream_id,
            events.c.stream_version,
            events.c.event_type,
        )
        .where(
            tuple_(events.c.tx_id, events.c.position)
            > tuple_(literal(after.tx_id, BigInteger()), literal(after.position, BigInteger())),
            events.c.shard.in_(shards),
        )
        .order_by(events.c.tx_id, events.c.position)
        .limit(1)
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return EventRef(row.tx_id, row.position, row.stream_id, row.stream_version, row.event_type)


def _failure(row: Row[Any]) -> Failure:
    return Failure(**{k: getattr(row, k) for k in Failure.__dataclass_fields__})


async def mark(
    conn: AsyncConnection,
    name: str,
    partition: int,
    ref: EventRef | None,
    at: Cursor,
    reason: str,
    attempts: int,
    worker: str,
) -> Failure:
    """Record that `name`'s `partition` stopped on `ref` (the next event after checkpoint
    `at`; None when it could not be found, then the checkpoint is recorded)."""
    values: dict[str, Any] = {
        "name": name,
        "partition": partition,
        "tx_id": ref.tx_id if ref else at.tx_id,
        "position": ref.position if ref else at.position,
        "stream_id": ref.stream_id if ref else None,
        "stream_version": ref.stream_version if ref else None,
        "event_type": ref.event_type if ref else None,
        "reason": reason[:REASON_CHARS],
        "attempts": attempts,
        "worker": worker[:200],
        "failed_at": utcnow(),
    }
    await conn.execute(
        delete(projection_failures).where(
            projection_failures.c.name == name, projection_failures.c.partition == partition
        )
    )
    await conn.execute(projection_failures.insert().values(values))
    return Failure(**values)


async def failed(
    conn: AsyncConnection, name: str | None = None, partitions: list[int] | None = None
) -> list[Failure]:
    """The failed partitions (of `name`, of those `partitions`), in order."""
    f = projection_failures
    stmt = select(f).order_by(f.c.name, f.c.partition)
    if name is not None:
        stmt = stmt.where(f.c.name == name)
    if partitions is not None:
        stmt = stmt.where(f.c.partition.in_(partitions))
    return [_failure(r) for r in await conn.execute(stmt)]


async def clear(
    conn: AsyncConnection, name: str | None = None, partition: int | None = None
) -> list[Failure]:
    """Retry: forget the failures (of `name`, of `partition`); the projector holding such a
    partition tries its event again (with a fresh count of attempts). Returns what was
    cleared."""
    found = await failed(conn, name, None if partition is None else [partition])
    for failure in found:
        await conn.execute(
            delete(projection_failures).where(
                projection_failures.c.name == failure.name,
                projection_failures.c.partition == failure.partition,
            )
        )
    return found


async def pending(conn: AsyncConnection, name: str, partition: int) -> tuple[Cursor, EventRef]:
    """The checkpoint of `name`'s `partition` (locked until commit on PostgreSQL) and the event
    it applies next. Raises ProjectionError when there is no such partition or event."""
    cp = projection_checkpoints
    stmt = select(cp.c.tx_id, cp.c.position, cp.c.partitions).where(
        cp.c.name == name, cp.c.partition == partition
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise ProjectionError(f"projection {name!r} has no partition {partition}")
    at = Cursor(row.tx_id, row.position)
    ref = await next_event(conn, at, leases.shards_of(partition, row.partitions))
    if ref is None:
        raise ProjectionError(f"partition {partition} of {name!r} has no event left to apply")
    return at, ref


async def skip(
    conn: AsyncConnection,
    name: str,
    partition: int,
    position: int,
    *,
    by: str,
    note: str,
) -> Skip:
    """Move `name`'s `partition` past exactly the event at `position`, which must be the next
    one it applies (and the one it failed on, if it failed), and record who skipped it and
    why. Raises ProjectionError otherwise; nothing changes then."""
    _, ref = await pending(conn, name, partition)
    if ref.position != position:
        raise ProjectionError(
            f"partition {partition} of {name!r} applies position {ref.position} next, not "
            f"{position}: only the next event can be skipped"
        )
    failures = await failed(conn, name, [partition])
    if failures and failures[0].position != position:
        raise ProjectionError(
            f"partition {partition} of {name!r} failed at position {failures[0].position}, "
            f"not {position}"
        )
    record = Skip(
        name=name,
        partition=partition,
        tx_id=ref.tx_id,
        position=ref.position,
        stream_id=ref.stream_id,
        stream_version=ref.stream_version,
        event_type=ref.event_type,
        reason=failures[0].reason if failures else None,
        note=note[:REASON_CHARS],
        skipped_by=by[:200],
        skipped_at=utcnow(),
    )
    await leases.write_checkpoint(conn, name, partition, ref.cursor)
    await clear(conn, name, partition)
    await conn.execute(projection_skips.insert().values(record.as_dict()))
    return record


async def skipped(conn: AsyncConnection, name: str | None = None) -> list[Skip]:
    """Every recorded skip (of `name`), oldest first."""
    s = projection_skips
    stmt = select(s).order_by(s.c.id)
    if name is not None:
        stmt = stmt.where(s.c.name == name)
    fields = Skip.__dataclass_fields__
    return [Skip(**{k: getattr(r, k) for k in fields}) for r in await conn.execute(stmt)]
