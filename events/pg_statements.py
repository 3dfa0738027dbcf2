"""The SQL only PostgreSQL runs: the read horizon, the guarded append to an existing stream,
the multi-stream INSERT of a group commit and the merged read of a projector's partitions.
Each statement is built (and so compiled) once."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
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
    insert,
    literal_column,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeEngine

from events.statements import (
    COLUMNS,
    EVENTS_WITH_KEYS,
    INSERTED,
    ROW_COLUMNS,
    guard_stream_id,
    guarded_source,
)
from events.tables import events

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


@functools.lru_cache(maxsize=64)
def guarded_insert(count: int) -> Insert:
    """PostgreSQL, expected version > 0: one statement that inserts `count` rows only if the
    expected version exists (no gap); a stale expectation still trips the unique index.
    Parameters: `guarded_params`. Built (and so compiled) once per row count."""
    guard = exists().where(
        events.c.stream_id == guard_stream_id(),
        events.c.stream_version == bindparam("guard_version", type_=Integer()),
    )
    source = guarded_source(count, guard)
    return insert(events).from_select(list(ROW_COLUMNS), source).returning(*INSERTED)


@functools.lru_cache(maxsize=64)
def pg_after_each(count: int) -> Select[Any]:
    """PostgreSQL: events after each of `count` cursors, each within its own shards, merged
    in log order below the read horizon (computed once). Built and compiled once per count;
    parameters `tx_<i>`, `position_<i>`, `shards_<i>` (an array: one parameter whatever the
    number of shards) and `limit`."""
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


def _pg_array(name: str, item: TypeEngine[Any]) -> BindParameter[Sequence[Any]]:
    return bindparam(name, type_=ARRAY(item))


#: PostgreSQL: the `events` rows of any number of streams, one array parameter per column
#: (`pg_columns`): a fixed text, so the server and asyncpg prepare it once whatever the count
PG_UNNEST_ROWS = (
    "SELECT * FROM unnest("
    "CAST(:stream_id AS UUID[]), CAST(:stream_version AS INTEGER[]), "
    "CAST(:shard AS SMALLINT[]), CAST(:event_id AS UUID[]), CAST(:event_type AS TEXT[]), "
    "CAST(:schema_version AS SMALLINT[]), CAST(:data AS JSONB[]), "
    "CAST(:metadata AS JSONB[]), CAST(:recorded_at AS TIMESTAMPTZ[]), "
    "CAST(:sealed AS BYTEA[]))"
)
#: the same for the streams' new `event_data_keys` rows (`k_<column>` parameters)
PG_UNNEST_KEYS = (
    "SELECT * FROM unnest(CAST(:k_stream_id AS UUID[]), CAST(:k_shard AS SMALLINT[]), "
    "CAST(:k_master_key_id AS TEXT[]), CAST(:k_wrapped_key AS BYTEA[]), "
    "CAST(:k_created_at AS TIMESTAMPTZ[]))"
)
PG_KEY_COLUMNS = "stream_id, shard, master_key_id, wrapped_key, created_at"


def pg_row_params(*, with_keys: bool) -> list[BindParameter[Any]]:
    """The typed array parameters of `PG_UNNEST_ROWS` (and of `PG_UNNEST_KEYS`)."""
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
        params += [
            _pg_array("k_stream_id", Uuid()),
            _pg_array("k_shard", SmallInteger()),
            _pg_array("k_master_key_id", String()),
            _pg_array("k_wrapped_key", LargeBinary()),
            _pg_array("k_created_at", DateTime(timezone=True)),
        ]
    return params


def _pg_unnest_insert(with_keys: bool) -> TextualSelect:
    """PostgreSQL: rows of any number of streams in ONE statement with a fixed text, from one
    array per column; with `with_keys`, the streams' new data key rows go in by the same
    statement (a data-modifying CTE): a registration stays one round trip with encryption
    on."""
    keys = ""
    if with_keys:
        keys = (
            f"WITH new_keys AS (INSERT INTO event_data_keys ({PG_KEY_COLUMNS}) {PG_UNNEST_KEYS}) "
        )
    sql = (
        f"{keys}INSERT INTO events ({', '.join(ROW_COLUMNS)}) {PG_UNNEST_ROWS} "
        "RETURNING position, tx_id, stream_version, stream_id"
    )
    return (
        text(sql)
        .bindparams(*pg_row_params(with_keys=with_keys))
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
