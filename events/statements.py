"""The SQL behind the store: statements built (and so compiled) once, the read horizon, and
the decoding of a stored row."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    BigInteger,
    DateTime,
    Insert,
    Integer,
    LargeBinary,
    Select,
    SmallInteger,
    String,
    TextualSelect,
    Uuid,
    any_,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from events import checks
from events.catalog import event_class
from events.crypto import Crypto, MasterKeyError
from events.envelope import Metadata, RecordedEvent
from events.errors import CorruptEventError
from events.tables import data_keys, events
from events.upcasting import upcast

#: The read horizon on PostgreSQL: the oldest transaction still running in THIS database, or
#: the snapshot's xmax when none is. `pg_snapshot_xmin` alone counts every database on the
#: server, so a long transaction elsewhere would hold every reader back. Only an xid seen
#: running in another database is left out; one we cannot place (a prepared transaction, a
#: session whose xid pg_stat_activity hides from us) still counts, so this is never later
#: than a transaction of ours that may still write events.
PG_READ_HORIZON = """coalesce(
  (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
   WHERE (x::text::bigint % 4294967296) NOT IN (
     SELECT a.backend_xid::text::bigint FROM pg_stat_activity AS a
     WHERE a.backend_xid IS NOT NULL AND a.datname IS DISTINCT FROM current_database())),
  pg_snapshot_xmax(pg_current_snapshot())::text::bigint)"""

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


def _guarded_source(count: int, guard: Any) -> Select[Any]:
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
    rows: list[dict[str, Any]], stream_id: Any, expected_version: int
) -> dict[str, Any]:
    """The parameters of `guarded_insert` / `sqlite_guarded_insert` for these rows."""
    params = {f"{c}_{i}": v for i, row in enumerate(rows) for c, v in row.items()}
    params["guard_stream_id"] = stream_id
    params["guard_version"] = expected_version
    return params


def _guard_stream_id() -> Any:
    return bindparam("guard_stream_id", type_=events.c.stream_id.type)


@functools.lru_cache(maxsize=64)
def guarded_insert(count: int) -> Insert:
    """PostgreSQL, expected version > 0: one statement that inserts `count` rows only if the
    expected version exists (no gap); a stale expectation still trips the unique index.
    Parameters: `guarded_params`. Built (and so compiled) once per row count."""
    guard = exists().where(
        events.c.stream_id == _guard_stream_id(),
        events.c.stream_version == bindparam("guard_version", type_=Integer()),
    )
    source = _guarded_source(count, guard)
    return insert(events).from_select(list(ROW_COLUMNS), source).returning(*INSERTED)


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
        .where(events.c.stream_id == _guard_stream_id())
        .scalar_subquery()
    )
    source = _guarded_source(count, head == bindparam("guard_version", type_=Integer()))
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


@functools.lru_cache(maxsize=64)
def pg_after_each(count: int) -> Select[Any]:
    """PostgreSQL: events after each of `count` cursors, each within its own shards, merged
    in log order below the read horizon (computed once). Built and compiled once per count;
    parameters `tx_<i>`, `position_<i>`, `shards_<i>` (an array: one parameter whatever the
    number of shards) and `limit`."""
    from sqlalchemy.dialects.postgresql import ARRAY

    limit = bindparam("limit", type_=Integer())
    ranges = []
    for i in range(count):
        after = tuple_(events.c.tx_id, events.c.position) > tuple_(
            bindparam(f"tx_{i}", type_=BigInteger()), bindparam(f"position_{i}", type_=BigInteger())
        )
        shards = events.c.shard == any_(bindparam(f"shards_{i}", type_=ARRAY(SmallInteger())))
        part = (
            select(*COLUMNS)
            .select_from(EVENTS_WITH_KEYS)
            .where(after, shards)
            .order_by(events.c.tx_id, events.c.position)
            .limit(limit)
            .subquery()
        )
        ranges.append(select(*part.c))
    merged = union_all(*ranges).subquery() if count > 1 else ranges[0].subquery()
    return (
        select(*merged.c)
        .where(merged.c.tx_id < literal_column(PG_READ_HORIZON))
        .order_by(merged.c.tx_id, merged.c.position)
        .limit(limit)
    )


def no_master_key(position: int) -> MasterKeyError:
    return MasterKeyError(
        f"the event at position {position} is encrypted and no master key is configured "
        "(REGISTRY_MASTER_KEY)"
    )


def opened(row: Any, crypto: Crypto | None) -> tuple[Any, bool]:
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


def decode(row: Any, crypto: Crypto | None = None) -> RecordedEvent:
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


def _pg_array(name: str, item: Any) -> Any:
    from sqlalchemy.dialects.postgresql import ARRAY

    return bindparam(name, type_=ARRAY(item))


def _pg_unnest_insert(with_keys: bool) -> TextualSelect:
    """PostgreSQL: rows of any number of streams in ONE statement with a fixed text (so the
    server and asyncpg prepare it once, whatever the row count), from one array per column;
    with `with_keys`, the streams' new data key rows go in by the same statement (a
    data-modifying CTE): a registration stays one round trip with encryption on."""
    from sqlalchemy.dialects.postgresql import JSONB

    cols = ", ".join(ROW_COLUMNS)
    keys = ""
    params = [
        _pg_array("stream_id", Uuid()),
        _pg_array("stream_version", Integer()),
        _pg_array("shard", SmallInteger()),
        _pg_array("event_id", Uuid()),
        _pg_array("event_type", String()),
        _pg_array("schema_version", SmallInteger()),
        _pg_array("data", JSONB()),
        _pg_array("metadata", JSONB()),
        _pg_array("recorded_at", DateTime(timezone=True)),
        _pg_array("sealed", LargeBinary()),
    ]
    if with_keys:
        keys = (
            "WITH new_keys AS (INSERT INTO event_data_keys "
            "(stream_id, shard, master_key_id, wrapped_key, created_at) "
            "SELECT * FROM unnest(CAST(:k_stream_id AS UUID[]), CAST(:k_shard AS SMALLINT[]), "
            "CAST(:k_master_key_id AS TEXT[]), CAST(:k_wrapped_key AS BYTEA[]), "
            "CAST(:k_created_at AS TIMESTAMPTZ[]))) "
        )
        params += [
            _pg_array("k_stream_id", Uuid()),
            _pg_array("k_shard", SmallInteger()),
            _pg_array("k_master_key_id", String()),
            _pg_array("k_wrapped_key", LargeBinary()),
            _pg_array("k_created_at", DateTime(timezone=True)),
        ]
    sql = (
        f"{keys}INSERT INTO events ({cols}) SELECT * FROM unnest("
        "CAST(:stream_id AS UUID[]), CAST(:stream_version AS INTEGER[]), "
        "CAST(:shard AS SMALLINT[]), CAST(:event_id AS UUID[]), CAST(:event_type AS TEXT[]), "
        "CAST(:schema_version AS SMALLINT[]), CAST(:data AS JSONB[]), "
        "CAST(:metadata AS JSONB[]), CAST(:recorded_at AS TIMESTAMPTZ[]), "
        "CAST(:sealed AS BYTEA[])) "
        "RETURNING position, tx_id, stream_version, stream_id"
    )
    return (
        text(sql)
        .bindparams(*params)
        .columns(events.c.position, events.c.tx_id, events.c.stream_version, events.c.stream_id)
    )


#: PostgreSQL's multi-stream INSERT (group commit), without and with new data key rows
PG_INSERT_ROWS = _pg_unnest_insert(with_keys=False)
PG_INSERT_ROWS_AND_KEYS = _pg_unnest_insert(with_keys=True)


def pg_columns(rows: list[dict[str, Any]], keys: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of `PG_INSERT_ROWS(_AND_KEYS)`: one list per column."""
    params = {c: [r[c] for r in rows] for c in ROW_COLUMNS}
    if keys:
        for c in ("stream_id", "shard", "master_key_id", "wrapped_key", "created_at"):
            params[f"k_{c}"] = [k[c] for k in keys]
    return params
