"""The user projection: folds each batch per stream in memory and writes the net result with a
few set-based statements (deletes, inserts and updates grouped by column set)."""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, literal, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection

from events import EVENT_TYPES, RecordedEvent
from events.crypto import Crypto, MasterKeyError
from events.statements import no_master_key
from events.upcasting import upcast
from projections.folding import Folder, StreamChange
from projections.tables import projection_tombstones

CURRENT_VERSIONS = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}
#: ids per IN (...) list
CHUNK = 1000


def table_of(model: Any) -> Table:
    """The `Table` behind a mapped class (or the table itself)."""
    table = getattr(model, "__table__", model)
    if not isinstance(table, Table):
        raise TypeError(f"not a mapped class or table: {model!r}")
    return table


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class UserProjection:
    """Projects user streams into a user table (and optionally an OAuth account table).

    `apply` is idempotent: every event at or below the version a row (or a deletion
    tombstone) already reflects is skipped, so a batch applied twice changes nothing and an
    older event applied after `UserDeleted` never brings the row back.
    """

    def __init__(self, user_table: Any, oauth_table: Any = None, *, name: str = "users") -> None:
        self.name = name
        self.user_model = user_table
        self.oauth_model = oauth_table
        self.user_table = table_of(user_table)
        self.oauth_table = table_of(oauth_table) if oauth_table is not None else None
        self._load_one_stmt: Any = None
        self.folder = Folder(
            frozenset(self.user_table.c.keys()),
            frozenset(self.oauth_table.c.keys()) if self.oauth_table is not None else None,
        )

    def with_tables(
        self, user_table: Table, oauth_table: Table | None, name: str
    ) -> UserProjection:
        """The same projection writing into other tables (a replay's next generation)."""
        return UserProjection(user_table, oauth_table, name=name)

    # ------------------------------------------------------------------ applying
    async def apply(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        """Apply `batch` (any streams, each stream's events in version order) in `conn`'s
        transaction."""
        if not batch:
            return
        changes = await self.load(conn, {r.stream_id for r in batch})
        self.fold(changes, batch)
        await self.write(conn, changes.values())

    async def apply_own(
        self, conn: AsyncConnection, recorded: Sequence[RecordedEvent], after_version: int
    ) -> bool:
        """Apply one stream's events in the transaction that appended them, only when the
        read model is exactly at `after_version` (the version they were decided on); else
        leave them to the projector. True when applied.

        Safe beside a running projector: it reads only committed transactions, so it sees
        these events together with the rows written here and skips them (their versions are
        already reflected). A read model behind `after_version` is never patched over a gap."""
        if not recorded:
            return False
        sid = recorded[0].stream_id
        if after_version == 0:
            # the stream begins in this very transaction: nothing of it can be projected yet
            # (a projector only reads committed events), so there is nothing to load
            changes = {sid: StreamChange(sid)}
            self.fold(changes, recorded)
            await self.write(conn, changes.values())
            return True
        assumed = StreamChange(sid, version=after_version, in_db=True)
        self.fold({sid: assumed}, recorded)
        if _row_update_only(assumed):
            # no load: the UPDATE itself checks that the row is at `after_version`
            stmt = _own_update_statement(self.user_table, tuple(sorted(assumed.update)))
            params = {f"_v_{k}": v for k, v in assumed.update.items()}
            result = await conn.execute(stmt, {**params, "_id": sid, "_after": after_version})
            return bool(result.rowcount)
        changes = await self.load(conn, [sid])
        if changes[sid].version != after_version:
            return False
        self.fold(changes, recorded)
        await self.write(conn, changes.values())
        return True

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        """The `Subscriber` protocol of the worker machinery."""
        await self.apply(conn, batch)

    def fold(self, changes: dict[uuid.UUID, StreamChange], batch: Iterable[RecordedEvent]) -> None:
        apply = self.folder.apply_recorded
        for recorded in batch:
            change = changes.get(recorded.stream_id)
            if change is None:
                change = changes[recorded.stream_id] = StreamChange(recorded.stream_id)
            apply(change, recorded)

    def fold_rows(
        self,
        changes: dict[uuid.UUID, StreamChange],
        rows: Iterable[Any],
        crypto: Crypto | None = None,
        keys: Mapping[uuid.UUID, Any] | None = None,
    ) -> int:
        """Fold stored rows without building event models: the replay's fast path. Each row is
        `(position, tx_id, stream_id, stream_version, event_type, schema_version, data,
        recorded_at, sealed)`, the order of `projections.replay.REPLAY_COLUMNS` (unpacked
        once: a named attribute of a row costs as much as opening a sealed event); `keys` maps
        the streams that have a data key row to its `(master_key_id, wrapped_key, erased_at)`.
        Returns the count."""
        apply = self.folder.apply
        current = CURRENT_VERSIONS
        stored = keys or {}
        opened: dict[uuid.UUID, Any] = {}  # this call's streams' data keys, unwrapped
        n = 0
        for (
            position,
            _,
            sid,
            version,
            event_type,
            schema_version,
            data,
            recorded_at,
            sealed,
        ) in rows:
            change = changes.get(sid)
            if change is None:
                change = changes[sid] = StreamChange(sid)
            row = stored.get(sid)
            erased = row is not None and row[2] is not None
            if sealed is not None and not erased:
                if crypto is None:
                    raise no_master_key(position)
                found = opened.get(sid)
                if found is None:
                    if row is None:
                        raise MasterKeyError(f"the event at position {position} has no data key")
                    key = crypto.key_from_row(sid, row[0], row[1])
                    found = opened[sid] = (key, sid.bytes)
                data = crypto.open(
                    found[0], sid, version, data, sealed, stream_bytes=found[1], in_place=True
                )
            if schema_version != current[event_type]:
                data = upcast(event_type, schema_version, data)
            apply(change, version, event_type, data, recorded_at, erased)
            n += 1
        return n

    async def load(
        self, conn: AsyncConnection, stream_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, StreamChange]:
        """The applied version of each stream, from its row or its tombstone."""
        ids = list(stream_ids)
        changes = {sid: StreamChange(sid) for sid in ids}
        user, tomb = self.user_table, projection_tombstones
        if len(ids) == 1:  # a writer's own stream: a statement built once, bound per call
            rows = (await conn.execute(self._load_one(), {"sid": ids[0]})).all()
            self._loaded(changes, rows)
            return changes
        for part in chunks(ids):
            # one round trip: rows and tombstones together (`=` for one id: no IN to render)
            stmt = union_all(
                select(user.c.id, user.c.version, literal(False).label("tomb")).where(
                    _matching(user.c.id, part)
                ),
                select(tomb.c.stream_id, tomb.c.version, literal(True)).where(
                    tomb.c.projection == self.name, _matching(tomb.c.stream_id, part)
                ),
            )
            self._loaded(changes, (await conn.execute(stmt)).all())
        return changes

    @staticmethod
    def _loaded(changes: dict[uuid.UUID, StreamChange], rows: Sequence[Any]) -> None:
        for sid, version, is_tomb in rows:
            if not is_tomb:
                change = changes[sid]
                change.in_db, change.version = True, version
        for sid, version, is_tomb in rows:
            change = changes[sid]
            if is_tomb and version > change.version:
                change.deleted, change.version = True, version

    def _load_one(self) -> Any:
        if self._load_one_stmt is None:
            user, tomb = self.user_table, projection_tombstones
            sid = bindparam("sid", type_=user.c.id.type)
            self._load_one_stmt = union_all(
                select(user.c.id, user.c.version, literal(False).label("tomb")).where(
                    user.c.id == sid
                ),
                select(tomb.c.stream_id, tomb.c.version, literal(True)).where(
                    tomb.c.projection == self.name, tomb.c.stream_id == sid
                ),
            )
        return self._load_one_stmt

    # ------------------------------------------------------------------ writing
    async def write(
        self, conn: AsyncConnection, changes: Iterable[StreamChange], *, copy: bool = False
    ) -> None:
        """Write the net result of folded changes: a few statements per batch. `copy`: new
        rows go in with COPY on PostgreSQL (bulk loads; the transaction must have begun)."""
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
        user, oauth, tomb = self.user_table, self.oauth_table, projection_tombstones
        for part in chunks(wipe):
            if oauth is not None:
                await conn.execute(delete(oauth).where(oauth.c.user_id.in_(part)))
            await conn.execute(delete(user).where(user.c.id.in_(part)))
        for part in chunks(tombstones):
            await conn.execute(
                delete(tomb).where(
                    tomb.c.projection == self.name,
                    tomb.c.stream_id.in_([c.stream_id for c in part]),
                )
            )
            rows = [
                {"projection": self.name, "stream_id": c.stream_id, "version": c.version}
                for c in part
                if c.deleted
            ]
            if rows:
                await conn.execute(insert(tomb), rows)
        await _insert_grouped(conn, user, inserts, copy=copy)
        await _update_grouped(conn, user, updates, guard_version=True)
        if oauth is not None:
            await _insert_grouped(conn, oauth, oauth_inserts, copy=copy)
            await _update_grouped(conn, oauth, oauth_updates, guard_version=False)


def _matching(col: Any, ids: Sequence[uuid.UUID]) -> Any:
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
        if copy and all(_copyable(v) for r in items for v in r.values()):
            await _copy(conn, table, cols, items)
            continue
        for part in chunks(items, 5000):
            await conn.execute(insert(table), list(part))


#: value types asyncpg's binary COPY takes as they are
COPYABLE = frozenset({str, int, float, bool, uuid.UUID, datetime, type(None)})


def _copyable(value: Any) -> bool:
    # ids read back through asyncpg are its own uuid.UUID subclass: as good for COPY (an exact
    # type check sent every replayed row through INSERT instead)
    return type(value) in COPYABLE or isinstance(value, uuid.UUID)


async def _copy(
    conn: AsyncConnection, table: Table, cols: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    """COPY rows into `table` on the connection's asyncpg driver, inside its transaction."""
    defaults = {
        c.key: cast(Any, c.default).arg
        for c in table.columns
        if c.key not in cols and c.default is not None and c.default.is_scalar
    }
    keys = [*cols, *defaults]
    # every row of a group has its keys in the order of `cols` (`_by_columns`)
    if defaults:
        tail = tuple(defaults.values())
        records = [(*r.values(), *tail) for r in rows]
    else:
        records = [tuple(r.values()) for r in rows]
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
def _update_statement(table: Table, cols: tuple[str, ...], guard_version: bool) -> Any:
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


def _row_update_only(change: StreamChange) -> bool:
    """The folded change only updates columns of an existing user row."""
    return bool(
        change.update
        and change.insert is None
        and not (change.wipe or change.deleted or change.tombstone_dirty)
        and not (change.oauth_insert or change.oauth_update)
    )


@functools.lru_cache(maxsize=256)
def _own_update_statement(table: Table, cols: tuple[str, ...]) -> Any:
    """An UPDATE of these columns of the row with id `_id` only if it is at version `_after`
    (the writer-side fast path: applied, or left to the projector)."""
    return _update_statement(table, cols, False).where(table.c.version == bindparam("_after"))


async def projected_version(
    conn: AsyncConnection, projection: UserProjection, stream_id: uuid.UUID
) -> int:
    """The stream version the projection reflects for a user (0 if none): its row's version,
    or the version of its deletion."""
    user, tomb = projection.user_table, projection_tombstones
    found = await conn.scalar(select(user.c.version).where(user.c.id == stream_id))
    if found is not None:
        return int(found)
    found = await conn.scalar(
        select(tomb.c.version).where(
            tomb.c.projection == projection.name, tomb.c.stream_id == stream_id
        )
    )
    return int(found or 0)
