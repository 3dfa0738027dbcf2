"""The unit of work of a command: everything it writes commits in ONE transaction, or nothing.

`UnitOfWork` is the port the command handlers write through (cosmicpython's
`AbstractUnitOfWork`): a transaction in which the handler reads the user's stream, appends,
keeps the reservations, erases, records the command id and projects. `SqlUnitOfWork` is the
database (one `engine.begin()`, the store's append joining it with `conn=`);
`registry.service.memory.InMemoryUnitOfWork` keeps the same rules in dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import Event, EventStore, Metadata, RecordedEvent
from events.crypto import shred
from events.keyring import Keyring
from events.port import EventLog
from events.scope import scope_of
from projections.signals import APPLIED
from registry.domain.commands import Command
from registry.domain.decisions import UserState
from registry.service import idempotency
from registry.service.at_once import AtOnce
from registry.service.uniqueness import reserve


class OwnProjection(Protocol):
    """What the writer-side fast path needs (projections.UserProjection fits). One with a
    `name` has this process's workers of that projection told what it projected."""

    async def apply_own(
        self, conn: AsyncConnection, recorded: Sequence[RecordedEvent], after_version: int
    ) -> bool: ...


class InlineProjection(OwnProjection, Protocol):
    """What inline mode needs of a projection (projections.UserProjection fits): the fast
    path, and the fold for when the read model is not where the command was decided."""

    name: str

    async def apply(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class Prior:
    """A command id's first outcome: the user, the versions before and after, and the
    stream up to the version after."""

    user_id: uuid.UUID
    from_version: int
    to_version: int
    stream: list[RecordedEvent]


class Transaction(Protocol):
    """One command's writes; they commit together when the transaction's block exits."""

    async def read_stream(self, user_id: uuid.UUID) -> list[RecordedEvent]:
        """The user's events, as this transaction sees them."""
        ...

    async def append(
        self,
        user_id: uuid.UUID,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata,
    ) -> list[RecordedEvent]:
        """`EventLog.append` in this transaction; `ConcurrencyError` when the stream moved."""
        ...

    async def reserve(self, before: UserState, recorded: Sequence[RecordedEvent]) -> None:
        """Take, move or release the email and OAuth reservations the events imply
        (`registry.service.uniqueness`); `EmailAlreadyRegisteredError` or
        `OAuthAccountAlreadyLinkedError` when another user holds one."""
        ...

    async def erase(self, user_id: uuid.UUID) -> None:
        """Crypto-shred the user's stream and clear the fingerprints of their commands."""
        ...

    async def record(
        self,
        command: Command,
        fingerprint: str | None,
        user_id: uuid.UUID,
        before: int,
        after: int,
    ) -> bool:
        """Record the command's id (`registry.service.idempotency`); False (nothing written)
        when it is recorded already."""
        ...

    async def project(
        self,
        recorded: Sequence[RecordedEvent],
        before: int,
        *,
        inline: InlineProjection | None,
        own: OwnProjection | None,
    ) -> bool:
        """Project the events in this transaction: always with `inline` (folding when the
        read model is not at `before`), with `own` only when it is exactly at `before`.
        True when they were projected."""
        ...


class UnitOfWork(Protocol):
    """Where commands write (see the module docstring)."""

    @property
    def store(self) -> EventLog:
        """The log the transactions append to (crypto, waking waiters, dropping keys)."""
        ...

    @property
    def write_lock(self) -> asyncio.Lock | None:
        """A lock every writer of this process takes around its transaction, or None."""
        ...

    @property
    def at_once(self) -> AtOnce | None:
        """Where a command's whole write can go in as one statement (PostgreSQL), or None."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction that commits when the block exits normally and rolls back (writing
        nothing) when it raises."""
        ...

    async def prior(self, command: Command, keyring: Keyring | None) -> Prior | None:
        """The first outcome of the command's id, or None when it was not processed.
        Raises `IdempotencyKeyReusedError` when the id was used for another command."""
        ...


def projected(engine: AsyncEngine, name: str, event_ids: Sequence[uuid.UUID]) -> None:
    """Tell this process's workers of projection `name` that these events, committed, were
    projected by their writer (`projections.signals.Applied`)."""
    scope_of(engine).get(APPLIED).add(name, event_ids)


def sqlite_write_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    """One lock per SQLite engine, shared by every CommandHandlers on it; None elsewhere."""
    return scope_of(engine).write_lock


class SqlTransaction:
    """A command's writes on one connection, in one database transaction."""

    def __init__(self, conn: AsyncConnection, store: EventStore) -> None:
        self.conn = conn
        self._store = store
        #: events projected here, by projection name: told to this process's workers once
        #: the transaction commits (`projections.signals.Applied`)
        self.applied: dict[str, list[uuid.UUID]] = {}

    async def read_stream(self, user_id: uuid.UUID) -> list[RecordedEvent]:
        return await self._store.read_stream(user_id, conn=self.conn)

    async def append(
        self,
        user_id: uuid.UUID,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata,
    ) -> list[RecordedEvent]:
        return await self._store.append(
            user_id,
            new_events,
            expected_version=expected_version,
            metadata=metadata,
            conn=self.conn,
        )

    async def reserve(self, before: UserState, recorded: Sequence[RecordedEvent]) -> None:
        await reserve(self.conn, before, recorded)

    async def erase(self, user_id: uuid.UUID) -> None:
        await shred(self.conn, self._store.crypto, user_id)
        await idempotency.forget(self.conn, user_id)

    async def record(
        self,
        command: Command,
        fingerprint: str | None,
        user_id: uuid.UUID,
        before: int,
        after: int,
    ) -> bool:
        return await idempotency.record(self.conn, command, fingerprint, user_id, before, after)

    async def project(
        self,
        recorded: Sequence[RecordedEvent],
        before: int,
        *,
        inline: InlineProjection | None,
        own: OwnProjection | None,
    ) -> bool:
        if inline is not None:
            if not await inline.apply_own(self.conn, recorded, before):
                await inline.apply(self.conn, recorded)
            self._projected(inline.name, recorded)
            return True
        if own is not None and await own.apply_own(self.conn, recorded, before):
            self._projected(getattr(own, "name", None), recorded)
            return True
        return False

    def _projected(self, name: str | None, recorded: Sequence[RecordedEvent]) -> None:
        if isinstance(name, str):
            self.applied.setdefault(name, []).extend(r.event_id for r in recorded)


class SqlUnitOfWork:
    """Commands written to the database: each transaction is one `engine.begin()`."""

    def __init__(self, engine: AsyncEngine, store: EventStore) -> None:
        self.engine = engine
        self._store = store
        self._write_lock = sqlite_write_lock(engine)
        self._at_once = AtOnce(engine, store) if engine.dialect.name == "postgresql" else None

    @property
    def store(self) -> EventStore:
        return self._store

    @property
    def write_lock(self) -> asyncio.Lock | None:
        # SQLite has one writer at a time anyway: queue this process's writers here instead
        # of in the driver's busy handler, where each waiter holds a pooled connection (and a
        # thread) for up to the busy timeout
        return self._write_lock

    @property
    def at_once(self) -> AtOnce | None:
        return self._at_once

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        async with self.engine.begin() as conn:
            tx = SqlTransaction(conn, self._store)
            yield tx
        for name, ids in tx.applied.items():
            projected(self.engine, name, ids)

    async def prior(self, command: Command, keyring: Keyring | None) -> Prior | None:
        async with self.engine.connect() as conn:
            row = await idempotency.prior(conn, command, keyring)
            if row is None:
                return None
            stream = await self._store.read_stream(
                row.user_id, to_version=row.to_version, conn=conn
            )
        return Prior(row.user_id, row.from_version, row.to_version, stream)
