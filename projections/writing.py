"""Writing folded changes: the net result of a batch in a few set-based statements (deletes,
inserts and updates grouped by column set), COPY for bulk loads on PostgreSQL."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    Update,
    bindparam,
    delete,
    insert,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from projections.folding import StreamChange
from projections.tables import projection_tombstones

#: ids per IN (...) list
CHUNK = 1000
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def write_changes(
    conn: AsyncConnection,
    projection: str,
    user: Table,
    oauth: Table | None,
    changes: Iterable[StreamChange],
    *,
    copy: bool = False,
) -> None:
    """Write the net result of folded changes of `projection` into its tables: a few
    statements per batch. `copy`: new rows go in with COPY on PostgreSQL (bulk loads; the
    transaction must have begun)."""
    wipe: list[uuid.UUID] = []
    tombstones: list[StreamChange] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    oauth_inserts: list[dict[str, Any]] = []
    oauth_updates: list[dict[str, Any]] = []
    for c in changes:
        if not c.applied:
            continue
        if c.wipe:
            wipe.append(c.stream_id)
        if c.tombstone_dirty:
            tombstones.append(c)
        if c.insert is not None:
            inserts.append(c.insert)
        elif c.update and not c.deleted:
            updates.append({**c.update, "_id": c.stream_id})
        oauth_inserts.extend(c.oauth_insert.values())
        oauth_updates.extend({**v, "_id": k} for k, v in c.oauth_update.items())
    tomb = projection_tombstones
    for ids in chunks(wipe):
        if oauth is not None:
            await conn.execute(delete(oauth).where(oauth.c.user_id.in_(ids)))
        await conn.execute(delete(user).where(user.c.id.in_(ids)))
    for group in chunks(tombstones):
        await conn.execute(
            delete(tomb).where(
                tomb.c.projection == projection,
                tomb.c.stream_id.in_([c.stream_id for c in group]),
            )
        )
        rows = [
            {"projection": projection, "stream_id": c.stream_id, "version": c.version}
            for c in group
            if c.deleted
        ]
        if rows:
            await conn.execute(insert(tomb), rows)
    await _insert_grouped(conn, user, inserts, copy=copy)
    await _update_grouped(conn, user, updates, guard_version=True)
    if oauth is not None:
        await _insert_grouped(conn, oauth, oauth_inserts, copy=copy)
        await _update_grouped(conn, oauth, oauth_updates, guard_version=False)


def matching(col: ColumnElement[uuid.UUID], ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
    return col == ids[0] if len(ids) == 1 else col.in_(ids)


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(row))


def _by_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their keys, in order: the rows one fold builds share their key order, so
    the tuple of keys is enough (a column set in two orders makes two groups, still correct)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row)
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    return groups


async def _insert_grouped(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, copy: bool = False
) -> None:
    """Multi-row INSERTs, one per distinct column set (executemany needs uniform keys)."""
    copy = copy and conn.dialect.name == "postgresql"
    for cols, items in _by_columns(rows).items():
        if copy:
            # every row of a group has its keys in the order of `cols` (`_by_columns`)
            values = [tuple(r.values()) for r in items]
            if all(_copyable(t) for t in set(map(type, itertools.chain.from_iterable(values)))):
                await _copy(conn, table, cols, values)
                continue
        for part in chunks(items, 5000):
            await conn.execute(insert(table), list(part))


#: value types asyncpg's binary COPY takes as they are
COPYABLE = frozenset({str, int, float, bool, uuid.UUID, datetime, type(None)})


def _copyable(kind: type) -> bool:
    """Values of this type go into COPY as they are."""
    # ids read back through asyncpg are its own uuid.UUID subclass, as good for COPY: an exact
    # type check would send every replayed row through INSERT
    return kind in COPYABLE or issubclass(kind, uuid.UUID)


async def _copy(
    conn: AsyncConnection, table: Table, cols: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """COPY rows (values in the order of `cols`) into `table` on the connection's asyncpg
    driver, inside its transaction."""
    defaults = {
        c.key: cast(Any, c.default).arg
        for c in table.columns
        if c.key not in cols and c.default is not None and c.default.is_scalar
    }
    keys = [*cols, *defaults]
    if defaults:
        tail = tuple(defaults.values())
        records = [(*r, *tail) for r in rows]
    else:
        records = rows
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.copy_records_to_table(
        table.name,
        records=records,
        columns=[table.c[k].name for k in keys],
        schema_name=table.schema,
    )


async def _update_grouped(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], *, guard_version: bool
) -> None:
    """Executemany UPDATEs by id, one statement per distinct column set. With
    `guard_version` a row already at or past the new version is left alone (another writer,
    such as an inline projection, got there first)."""
    for cols, group in itertools.groupby(sorted(rows, key=_key), key=_key):
        stmt = _update_statement(table, cols, guard_version)
        params = [{("_id" if k == "_id" else f"_v_{k}"): v for k, v in r.items()} for r in group]
        await conn.execute(stmt, params)


@functools.lru_cache(maxsize=256)
def _update_statement(table: Table, cols: tuple[str, ...], guard_version: bool) -> Update:
    """An UPDATE by id of these columns, built once per column set (reused compiled form)."""
    names = [c for c in cols if c != "_id"]
    # bind names must differ from column names in an UPDATE's SET clause
    stmt = (
        update(table)
        .where(table.c.id == bindparam("_id"))
        .values({n: bindparam(f"_v_{n}") for n in names})
    )
    if guard_version and "version" in names:
        stmt = stmt.where(table.c.version < bindparam("_v_version"))
    return stmt


def row_update_only(change: StreamChange) -> bool:
    """The folded change only updates columns of an existing user row."""
    return bool(
        change.update
        and change.insert is None
        and not (change.wipe or change.deleted or change.tombstone_dirty)
        and not (change.oauth_insert or change.oauth_update)
    )


@functools.lru_cache(maxsize=256)
def own_update_statement(table: Table, cols: tuple[str, ...]) -> Update:
    """An UPDATE of these columns of the row with id `_id` only if it is at version `_after`
    (the writer-side fast path: applied, or left to the projector)."""
    return _update_statement(table, cols, False).where(table.c.version == bindparam("_after"))
