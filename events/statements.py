"""The SQL both SQL stores share: what a read selects, the rows of a guarded append, SQLite's
guarded append, and the decoding of a stored row. PostgreSQL's own statements are in
`events.pg_statements`."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Insert,
    Integer,
    Row,
    Select,
    bindparam,
    func,
    select,
    union_all,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from events import checks
from events.catalog import event_class
from events.crypto import Crypto
from events.envelope import Metadata, RecordedEvent
from events.errors import CorruptEventError
from events.keyring import MasterKeyError
from events.tables import data_keys, events
from events.upcasting import upcast

COLUMNS = (
    events.c.position,
    events.c.tx_id,
    events.c.stream_id,
    events.c.stream_version,
    events.c.event_id,
    events.c.event_type,
    events.c.schema_version,
    events.c.data,
    events.c.metadata,
    events.c.recorded_at,
    events.c.sealed,
    data_keys.c.master_key_id,
    data_keys.c.wrapped_key,
    data_keys.c.erased_at,
)
#: what every read selects from: each event beside its stream's data key row (if any)
EVENTS_WITH_KEYS = events.outerjoin(
    data_keys,
    (data_keys.c.stream_id == events.c.stream_id) & (data_keys.c.shard == events.c.shard),
)


INSERTED = (events.c.position, events.c.tx_id, events.c.stream_version)
ROW_COLUMNS = (
    "stream_id",
    "stream_version",
    "shard",
    "event_id",
    "event_type",
    "schema_version",
    "data",
    "metadata",
    "recorded_at",
    "sealed",
)


def guarded_source(count: int, guard: ColumnElement[bool]) -> Select[Any]:
    """`count` rows of bound parameters (`<column>_<i>` for row i), selected only if `guard`."""
    rows = [
        select(*(bindparam(f"{c}_{i}", type_=events.c[c].type).label(c) for c in ROW_COLUMNS))
        for i in range(count)
    ]
    if count == 1:
        return rows[0].where(guard)
    new = union_all(*rows).subquery("new")
    return select(*(new.c[c] for c in ROW_COLUMNS)).where(guard)


def guarded_params(
    rows: list[dict[str, Any]], stream_id: uuid.UUID, expected_version: int
) -> dict[str, Any]:
    """The parameters of `guarded_insert` / `sqlite_guarded_insert` for these rows."""
    params = {f"{c}_{i}": v for i, row in enumerate(rows) for c, v in row.items()}
    params["guard_stream_id"] = stream_id
    params["guard_version"] = expected_version
    return params


def guard_stream_id() -> BindParameter[uuid.UUID]:
    return bindparam("guard_stream_id", type_=events.c.stream_id.type)


@functools.lru_cache(maxsize=64)
def sqlite_guarded_insert(count: int) -> Insert:
    """SQLite, any expected version: one statement that inserts `count` rows only if the
    stream's head is exactly the expected version, and returns them; a stale (or early)
    expectation inserts and returns nothing, and raises nothing.

    A conflict must not be a failed statement on SQLite: SQLAlchemy 2.0's aiosqlite adapter
    leaves a failed statement's driver cursor to the garbage collector, and freeing it on the
    event loop can block the loop on that connection's mutex for the whole busy timeout. The
    guard is exact because SQLite runs one writer at a time and an INSERT takes the write lock
    before it reads; ON CONFLICT DO NOTHING keeps even an unforeseen duplicate from failing
    (fewer rows returned is a conflict too). Parameters: `guarded_params`."""
    head = (
        select(func.coalesce(func.max(events.c.stream_version), 0))
        .where(events.c.stream_id == guard_stream_id())
        .scalar_subquery()
    )
    source = guarded_source(count, head == bindparam("guard_version", type_=Integer()))
    return (
        sqlite_insert(events)
        .from_select(list(ROW_COLUMNS), source)
        .on_conflict_do_nothing()
        .returning(*INSERTED)
    )


#: SQLite: a stream's new data key row; returns nothing (and raises nothing) when the stream
#: has one already (another writer's), see `sqlite_guarded_insert`
SQLITE_INSERT_KEY = (
    sqlite_insert(data_keys).on_conflict_do_nothing().returning(data_keys.c.stream_id)
)


def no_master_key(position: int) -> MasterKeyError:
    return MasterKeyError(
        f"the event at position {position} is encrypted and no master key is configured "
        "(REGISTRY_MASTER_KEY)"
    )


def opened(row: Row[Any], crypto: Crypto | None) -> tuple[Any, bool]:
    """A stored row's payload with its sealed values put back, and whether the stream was
    erased (then the payload keeps "[erased]" for them). Needs the row's `sealed` and key
    columns (`COLUMNS`)."""
    if row.erased_at is not None:
        return row.data, True
    if row.sealed is None:
        return row.data, False
    if crypto is None:
        raise no_master_key(row.position)
    if row.wrapped_key is None:
        raise MasterKeyError(f"the event at position {row.position} has no data key")
    key = crypto.key_from_row(row.stream_id, row.master_key_id, row.wrapped_key)
    return crypto.open(key, row.stream_id, row.stream_version, row.data, row.sealed), False


def decode(row: Row[Any], crypto: Crypto | None = None) -> RecordedEvent:
    """A stored row as a `RecordedEvent`, its payload opened and upcast to the current model."""
    data, erased = opened(row, crypto)
    data = upcast(row.event_type, row.schema_version, data)
    cls = event_class(row.event_type)
    try:
        event = cls.model_validate(data)
        meta = Metadata.model_validate(row.metadata)
    except ValidationError as exc:
        problem = checks.describe(exc)
        raise CorruptEventError(row.position, row.event_type, row.schema_version, problem) from None
    return RecordedEvent(
        position=row.position,
        tx_id=row.tx_id,
        stream_id=row.stream_id,
        stream_version=row.stream_version,
        event_id=row.event_id,
        event_type=row.event_type,
        schema_version=row.schema_version,
        event=event,
        metadata=meta,
        recorded_at=row.recorded_at,
        erased=erased,
    )
