"""A command's whole write as ONE statement, on PostgreSQL.

What a command writes in its transaction (its events, the stream's new data key, the email
reservations its events take or release, the record of its command id, and the user row its
events project to) can go in as a single statement: data-modifying CTEs, each after the
events' INSERT and only if it inserted. A single statement is a transaction of its own, so it
costs one round trip instead of BEGIN, one per write and COMMIT.

It stays all or nothing, and a refusal fails no statement (as in the transaction,
`events.claims`): the address the events reserve goes first (`ON CONFLICT DO NOTHING`), and
only if the command's id is not recorded yet; the events go in only if it went in, and every
other write only if the events did. The command's id is then recorded by a plain INSERT: only
a concurrent delivery of the same id that got past the same check makes it fail, and the
whole statement with it. A stale expected version trips the events' unique index as in the
transaction. The user row is projected only where it is exactly at the version the command
was decided on (worker mode's writer-side fast path), else left to the projector.

`AtOnce.prepare` returns None for what one statement does not cover (OAuth account
reservations, erasure, deletion, a no-op command that records its id, an inline projection
that would have to fold an existing row): the handlers then use the unit of work's
transaction, as on SQLite and in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, TextualSelect, bindparam, column, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger, Boolean, Integer

from events import Event, Metadata, RecordedEvent, UserErased
from events.connectivity import violated_table
from events.errors import ConcurrencyError
from events.pg_statements import (
    PG_KEY_COLUMNS,
    PG_UNNEST_KEYS,
    PG_UNNEST_ROWS,
    pg_columns,
    pg_row_params,
)
from events.sql import EventStore, Pending
from events.statements import ROW_COLUMNS
from events.tables import data_keys, events
from projections import UserProjection
from projections.folding import StreamChange
from projections.writing import row_update_only
from registry.domain.commands import Command
from registry.domain.decisions import UserState
from registry.errors import EmailAlreadyRegisteredError
from registry.service.idempotency import record_row
from registry.service.uniqueness import reserve_in
from registry.tables import email_reservations, processed_commands


class DuplicateCommand(Exception):
    """The command id is recorded already: nothing was written."""


@dataclass
class _Planned:
    """The reservations a command's events take and release, noted instead of written."""

    takes: list[str] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    other: bool = False  # OAuth accounts, or every reservation of a deleted user

    async def take_email(self, email: str, user_id: uuid.UUID) -> bool:
        self.takes.append(email)
        return True

    async def release_email(self, email: str, user_id: uuid.UUID) -> None:
        self.releases.append(email)

    async def take_oauth(
        self, oauth_name: str, account_id: str, user_id: uuid.UUID, oauth_account_id: uuid.UUID
    ) -> bool:
        self.other = True
        return True

    async def release_oauth(self, oauth_name: str, account_id: str) -> None:
        self.other = True

    async def release_all(self, user_id: uuid.UUID) -> None:
        self.other = True


@dataclass
class Write:
    """A command's write, ready to go in as one statement."""

    pending: Pending
    take: str | None = None
    release: str | None = None
    record: dict[str, Any] | None = None
    projection: UserProjection | None = None
    #: the projected user row: a whole new row, or the changed columns of the existing one
    insert: dict[str, Any] | None = None
    update: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Shape:
    guarded: bool
    keys: bool
    take: bool
    release: bool
    record: tuple[str, ...] | None
    table: Table | None
    insert: tuple[str, ...] | None
    update: tuple[str, ...] | None


class AtOnce:
    """One-statement writes through `store` on its PostgreSQL engine (see the module
    docstring)."""

    def __init__(self, engine: AsyncEngine, store: EventStore) -> None:
        self.engine = engine
        self.store = store
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._statements: dict[_Shape, TextualSelect] = {}

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection outside any transaction for one command: its read, the sealing (a
        data key not cached is read on it) and its write, as a session holds its connection
        for a request."""
        return self._autocommit.connect()

    async def read_stream(self, conn: AsyncConnection, user_id: uuid.UUID) -> list[RecordedEvent]:
        """The user's events, read outside a transaction (the write checks the version)."""
        return await self.store.read_stream(user_id, conn=conn)

    async def prepare(
        self,
        conn: AsyncConnection,
        state: UserState,
        new_events: Sequence[Event],
        metadata: Metadata,
        command: Command,
        fingerprint: str | None,
        *,
        projection: object | None,
        inline: bool,
    ) -> Write | None:
        """The command's write as one statement, or None when one statement does not cover
        it. `projection`: the handlers' inline or writer-side projection, if any (`inline`:
        it must project)."""
        if not new_events or any(isinstance(e, UserErased) for e in new_events):
            return None
        if projection is not None and not isinstance(projection, UserProjection):
            return None
        pending = self.store.prepare(
            state.user_id, new_events, expected_version=state.version, metadata=metadata
        )
        # the events as they will be recorded (positions are known only once inserted: the
        # reservations and the projection's fold do not look at them)
        stub = self.store.recorded(pending, {r["stream_version"]: (0, 0) for r in pending.rows})
        planned = _Planned()
        await reserve_in(planned, state, stub)
        if planned.other or len(planned.takes) > 1 or len(planned.releases) > 1:
            return None
        if set(planned.takes) & set(planned.releases):
            return None
        write = Write(
            pending,
            take=planned.takes[0] if planned.takes else None,
            release=planned.releases[0] if planned.releases else None,
        )
        if command.command_id is not None:
            after = pending.version + len(pending.rows)
            write.record = record_row(command, fingerprint, state.user_id, state.version, after)
        if projection is not None:
            change = StreamChange(state.user_id, version=state.version, in_db=state.version > 0)
            projection.fold({state.user_id: change}, stub)
            if state.version == 0 and change.insert is not None and not change.oauth_insert:
                write.insert = change.insert
            elif state.version > 0 and not inline and row_update_only(change):
                write.update = change.update
            elif inline:
                return None  # inline mode must project: the transaction folds the row
            write.projection = projection if (write.insert or write.update) else None
        await self.store.seal(pending, conn)
        return write

    async def write(self, conn: AsyncConnection, write: Write) -> tuple[list[RecordedEvent], bool]:
        """Send the write; its recorded events, and whether the user row was projected.
        Raises `ConcurrencyError` (the stream moved), `EmailAlreadyRegisteredError` or
        `DuplicateCommand`; nothing is written then."""
        pending = write.pending
        stmt, params = self._statement(write)
        try:
            rows = (await conn.execute(stmt, params)).all()
        except IntegrityError as exc:
            table = violated_table(exc)
            if table == processed_commands.name:  # recorded meanwhile by another delivery
                raise DuplicateCommand(str(params.get("command_id"))) from None
            if table not in (events.name, data_keys.name):
                raise  # not the stream's: a constraint of the user table, say
            # a stale expected version trips the unique index; a stream given a data key by
            # another writer first, the key's
            actual = await self.store.stream_version(pending.sid, conn=conn)
            raise ConcurrencyError(pending.sid, pending.version, actual) from exc
        if rows[0][0] is None:  # nothing went in
            if rows[0][5]:
                raise DuplicateCommand(str(params.get("command_id")))
            if not rows[0][4]:
                raise EmailAlreadyRegisteredError(
                    "a user with this email address is already registered"
                )
            actual = await self.store.stream_version(pending.sid, conn=conn)  # not there
            raise ConcurrencyError(pending.sid, pending.version, actual)
        recorded = self.store.recorded(pending, {r[2]: (r[0], r[1]) for r in rows})
        return recorded, bool(rows[0][3])

    # ------------------------------------------------------------------ the statement
    def _statement(self, write: Write) -> tuple[TextualSelect, dict[str, Any]]:
        pending = write.pending
        table = write.projection.user_table if write.projection is not None else None
        shape = _Shape(
            guarded=pending.version > 0,
            keys=pending.key_row is not None,
            take=write.take is not None,
            release=write.release is not None,
            record=tuple(write.record) if write.record is not None else None,
            table=table,
            insert=tuple(write.insert) if write.insert is not None else None,
            update=tuple(write.update) if write.update is not None else None,
        )
        stmt = self._statements.get(shape)
        if stmt is None:
            stmt = self._statements[shape] = self._build(shape)
        params = pg_columns(pending.rows, [pending.key_row] if pending.key_row else [])
        params["user_id"] = pending.sid
        if shape.guarded:
            params["guard_version"] = pending.version
        if write.take is not None:
            params["take_email"] = write.take
            params["reserved_at"] = pending.recorded_at
        if write.release is not None:
            params["release_email"] = write.release
        if write.record is not None:
            params["command_id"] = write.record["command_id"]
            for i, value in enumerate(write.record.values()):
                params[f"r{i}"] = value
        for i, value in enumerate((write.insert or write.update or {}).values()):
            params[f"p{i}"] = value
        if write.update is not None:
            params["p_after"] = pending.version
        return stmt, params

    def _build(self, shape: _Shape) -> TextualSelect:
        q = self.engine.dialect.identifier_preparer
        binds = pg_row_params(with_keys=shape.keys)
        when = "WHERE EXISTS (SELECT 1 FROM ev)"
        parts: list[str] = []
        reservations = q.format_table(email_reservations)
        commands = q.format_table(processed_commands)
        # first what may refuse the command: its id recorded already, the address taken
        seen = "false"
        if shape.record is not None:
            seen = f"EXISTS (SELECT 1 FROM {commands} WHERE command_id = :command_id)"
            binds.append(bindparam("command_id", type_=processed_commands.c.command_id.type))
        gate = f"NOT {seen}"
        if shape.take:
            parts.append(
                f"taken AS (INSERT INTO {reservations} (email, user_id, reserved_at) "
                f"SELECT :take_email, :user_id, :reserved_at WHERE {gate} "
                "ON CONFLICT DO NOTHING RETURNING 1)"
            )
            binds.append(bindparam("take_email", type_=email_reservations.c.email.type))
            binds.append(bindparam("reserved_at", type_=email_reservations.c.reserved_at.type))
            gate = "EXISTS (SELECT 1 FROM taken)"
        guard = f" WHERE {gate}"
        if shape.guarded:
            guard += (
                " AND EXISTS (SELECT 1 FROM events WHERE stream_id = :user_id"
                " AND stream_version = :guard_version)"
            )
            binds.append(bindparam("guard_version", type_=Integer()))
        binds.append(bindparam("user_id", type_=events.c.stream_id.type))
        parts.append(
            f"ev AS (INSERT INTO events ({', '.join(ROW_COLUMNS)}) {PG_UNNEST_ROWS}{guard} "
            "RETURNING position, tx_id, stream_version)"
        )
        if shape.keys:
            parts.append(
                f"new_keys AS (INSERT INTO event_data_keys ({PG_KEY_COLUMNS}) "
                f"{PG_UNNEST_KEYS} {when})"
            )
        if shape.release:
            parts.append(
                f"released AS (DELETE FROM {reservations} WHERE email = :release_email"
                f" AND user_id = :user_id AND EXISTS (SELECT 1 FROM ev))"
            )
            binds.append(bindparam("release_email", type_=email_reservations.c.email.type))
        if shape.record is not None:
            cols = shape.record
            parts.append(
                f"recorded AS (INSERT INTO {commands} ({', '.join(q.quote(c) for c in cols)}) "
                f"SELECT {', '.join(f':r{i}' for i in range(len(cols)))} {when})"
            )
            binds += [
                bindparam(f"r{i}", type_=processed_commands.c[c].type) for i, c in enumerate(cols)
            ]
        projected = "0"
        if shape.table is not None:
            table = shape.table
            cols = shape.insert or shape.update or ()
            names = [q.quote(table.c[c].name) for c in cols]
            if shape.insert is not None:
                parts.append(
                    f"projected AS (INSERT INTO {q.format_table(table)} ({', '.join(names)}) "
                    f"SELECT {', '.join(f':p{i}' for i in range(len(cols)))} {when} "
                    "RETURNING 1)"
                )
            else:
                sets = ", ".join(f"{n} = :p{i}" for i, n in enumerate(names))
                parts.append(
                    f"projected AS (UPDATE {q.format_table(table)} SET {sets} "
                    f"WHERE {q.quote(table.c.id.name)} = :user_id"
                    f" AND {q.quote(table.c.version.name)} = :p_after"
                    " AND EXISTS (SELECT 1 FROM ev) RETURNING 1)"
                )
                binds.append(bindparam("p_after", type_=Integer()))
            binds += [bindparam(f"p{i}", type_=table.c[c].type) for i, c in enumerate(cols)]
            projected = "(SELECT count(*) FROM projected)"
        # one row at least: with nothing inserted, whether the gate's insert went in says why
        sql = (
            f"WITH {', '.join(parts)} "
            f"SELECT ev.position, ev.tx_id, ev.stream_version, {projected} AS projected, "
            f"{gate} AS gated, {seen} AS seen FROM (SELECT 1) AS one LEFT JOIN ev ON true"
        )
        return (
            text(sql)
            .bindparams(*binds)
            .columns(
                column("position", BigInteger()),
                column("tx_id", BigInteger()),
                column("stream_version", Integer()),
                column("projected", BigInteger()),
                column("gated", Boolean()),
                column("seen", Boolean()),
            )
        )
