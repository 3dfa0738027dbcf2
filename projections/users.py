"""The user projection: folds each batch per stream in memory and writes the net result
(`projections.writing`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import CompoundSelect, Row, Table, bindparam, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from events import RecordedEvent
from events.crypto import Crypto
from projections.folding import Folder, StreamChange
from projections.replay_fold import CURRENT_VERSIONS as CURRENT_VERSIONS
from projections.replay_fold import fold_rows
from projections.replay_reads import KeyRow
from projections.tables import BaseOAuthAccountTableUUID, BaseUserTableUUID, projection_tombstones
from projections.writing import (
    chunks,
    matching,
    own_update_statement,
    row_update_only,
    write_changes,
)

#: what a projection writes into: a mapped class built on the mixin, or its table
UserModel = type[BaseUserTableUUID] | Table
OAuthModel = type[BaseOAuthAccountTableUUID] | Table


def table_of(model: UserModel | OAuthModel) -> Table:
    """The `Table` behind a mapped class (or the table itself)."""
    table = getattr(model, "__table__", model)
    if not isinstance(table, Table):
        raise TypeError(f"not a mapped class or table: {model!r}")
    return table


class UserProjection:
    """Projects user streams into a user table (and optionally an OAuth account table).

    `apply` is idempotent: every event at or below the version a row (or a deletion
    tombstone) already reflects is skipped, so a batch applied twice changes nothing and an
    older event applied after `UserDeleted` never brings the row back.
    """

    def __init__(
        self, user_table: UserModel, oauth_table: OAuthModel | None = None, *, name: str = "users"
    ) -> None:
        self.name = name
        self.user_model = user_table
        self.oauth_model = oauth_table
        self.user_table = table_of(user_table)
        self.oauth_table = table_of(oauth_table) if oauth_table is not None else None
        self._load_one_stmt: CompoundSelect[tuple[uuid.UUID, int, bool]] | None = None
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
        if row_update_only(assumed):
            # no load: the UPDATE itself checks that the row is at `after_version`
            stmt = own_update_statement(self.user_table, tuple(sorted(assumed.update)))
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
        rows: Iterable[Sequence[Any]],
        crypto: Crypto | None = None,
        keys: Mapping[uuid.UUID, KeyRow] | None = None,
    ) -> int:
        """Fold stored rows without building event models: the replay's fast path. Each row is
        `(position, tx_id, stream_id, stream_version, event_type, schema_version, data,
        recorded_at, sealed)`, the order of `projections.replay_reads.REPLAY_COLUMNS` (unpacked
        once: a named attribute of a row costs as much as opening a sealed event), `data` the
        payload's JSON text (`events.codec.loads` decodes it here, once); `keys` maps
        the streams that have a data key row to its `(master_key_id, wrapped_key, erased_at)`.
        Returns the count."""
        return fold_rows(self.folder, changes, rows, crypto, keys)

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
                    matching(user.c.id, part)
                ),
                select(tomb.c.stream_id, tomb.c.version, literal(True)).where(
                    tomb.c.projection == self.name, matching(tomb.c.stream_id, part)
                ),
            )
            self._loaded(changes, (await conn.execute(stmt)).all())
        return changes

    @staticmethod
    def _loaded(
        changes: dict[uuid.UUID, StreamChange], rows: Sequence[Row[tuple[uuid.UUID, int, bool]]]
    ) -> None:
        for sid, version, is_tomb in rows:
            if not is_tomb:
                change = changes[sid]
                change.in_db, change.version = True, version
        for sid, version, is_tomb in rows:
            change = changes[sid]
            if is_tomb and version > change.version:
                change.deleted, change.version = True, version

    def _load_one(self) -> CompoundSelect[tuple[uuid.UUID, int, bool]]:
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
        """Write the net result of folded changes (`projections.writing.write_changes`)."""
        await write_changes(conn, self.name, self.user_table, self.oauth_table, changes, copy=copy)


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
