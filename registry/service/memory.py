"""The unit of work in memory: the command handlers without a database.

Events go to an `events.memory.InMemoryEventStore`; reservations and processed commands are
dicts, copied at the start of a transaction and swapped in when it commits, in the same step
as its events (the store runs one transaction at a time). The rules are the database's:
reservations keyed by the normalised email and by (provider, account id), a command id
recorded once, an erasure clearing fingerprints. There is no read model here, so there is
nothing to project into.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from events import Event, Metadata, RecordedEvent
from events.keyring import Keyring
from events.memory import InMemoryEventStore, MemoryTransaction
from registry.domain.commands import Command
from registry.domain.decisions import UserState
from registry.service import idempotency
from registry.service.at_once import AtOnce
from registry.service.uniqueness import reserve_in
from registry.service.unit_of_work import InlineProjection, OwnProjection, Prior


@dataclass(frozen=True, slots=True)
class ProcessedCommand:
    """A processed command's record (the `processed_commands` row)."""

    command: str
    fingerprint: str | None
    user_id: uuid.UUID
    from_version: int
    to_version: int


@dataclass(slots=True)
class Kept:
    """What the unit of work keeps beside the log."""

    #: normalised email -> user
    emails: dict[str, uuid.UUID] = dataclasses.field(default_factory=dict)
    #: (provider, account id) -> (user, OAuth account id)
    oauth: dict[tuple[str, str], tuple[uuid.UUID, uuid.UUID]] = dataclasses.field(
        default_factory=dict
    )
    #: command id -> its record
    processed: dict[str, ProcessedCommand] = dataclasses.field(default_factory=dict)

    def copy(self) -> Kept:
        return Kept(dict(self.emails), dict(self.oauth), dict(self.processed))


class MemoryReservations:
    """`registry.service.uniqueness.Reservations` on a transaction's copy of the dicts."""

    def __init__(self, kept: Kept) -> None:
        self.kept = kept

    async def take_email(self, email: str, user_id: uuid.UUID) -> bool:
        if email in self.kept.emails:
            return False
        self.kept.emails[email] = user_id
        return True

    async def release_email(self, email: str, user_id: uuid.UUID) -> None:
        if self.kept.emails.get(email) == user_id:
            del self.kept.emails[email]

    async def take_oauth(
        self, oauth_name: str, account_id: str, user_id: uuid.UUID, oauth_account_id: uuid.UUID
    ) -> bool:
        key = (oauth_name, account_id)
        if key in self.kept.oauth:
            return False
        self.kept.oauth[key] = (user_id, oauth_account_id)
        return True

    async def release_oauth(self, oauth_name: str, account_id: str) -> None:
        self.kept.oauth.pop((oauth_name, account_id), None)

    async def release_all(self, user_id: uuid.UUID) -> None:
        self.kept.emails = {e: u for e, u in self.kept.emails.items() if u != user_id}
        self.kept.oauth = {k: v for k, v in self.kept.oauth.items() if v[0] != user_id}


class MemoryUnitOfWorkTransaction:
    """`registry.service.unit_of_work.Transaction` in memory."""

    def __init__(self, events: MemoryTransaction, kept: Kept) -> None:
        self._events = events
        self.kept = kept

    async def read_stream(self, user_id: uuid.UUID) -> list[RecordedEvent]:
        return self._events.read_stream(user_id)

    async def append(
        self,
        user_id: uuid.UUID,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata,
    ) -> list[RecordedEvent]:
        return self._events.append(
            user_id, new_events, expected_version=expected_version, metadata=metadata
        )

    async def reserve(self, before: UserState, recorded: Sequence[RecordedEvent]) -> None:
        await reserve_in(MemoryReservations(self.kept), before, recorded)

    async def erase(self, user_id: uuid.UUID) -> None:
        self._events.erase(user_id)
        self.kept.processed = {
            k: dataclasses.replace(v, fingerprint=None) if v.user_id == user_id else v
            for k, v in self.kept.processed.items()
        }

    async def record(
        self,
        command: Command,
        fingerprint: str | None,
        user_id: uuid.UUID,
        before: int,
        after: int,
    ) -> bool:
        assert command.command_id is not None
        if command.command_id in self.kept.processed:
            return False
        self.kept.processed[command.command_id] = ProcessedCommand(
            command.name, fingerprint, user_id, before, after
        )
        return True

    async def project(
        self,
        recorded: Sequence[RecordedEvent],
        before: int,
        *,
        inline: InlineProjection | None,
        own: OwnProjection | None,
    ) -> bool:
        if inline is not None or own is not None:
            raise TypeError("projections write SQL tables: the in-memory unit of work has none")
        return False


class InMemoryUnitOfWork:
    """`registry.service.unit_of_work.UnitOfWork` in memory (see the module docstring)."""

    def __init__(self, store: InMemoryEventStore | None = None) -> None:
        self._store = store if store is not None else InMemoryEventStore()
        self.kept = Kept()

    @property
    def store(self) -> InMemoryEventStore:
        return self._store

    @property
    def at_once(self) -> AtOnce | None:
        return None

    @property
    def write_lock(self) -> asyncio.Lock | None:
        return None  # the store's transactions run one at a time already

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryUnitOfWorkTransaction]:
        async with self._store.transaction() as events:
            tx = MemoryUnitOfWorkTransaction(events, self.kept.copy())
            yield tx
            # no await between this and the events' commit: both become visible at once
            self.kept = tx.kept

    async def prior(self, command: Command, keyring: Keyring | None) -> Prior | None:
        assert command.command_id is not None
        found = self.kept.processed.get(command.command_id)
        if found is None:
            return None
        idempotency.refuse_reuse(found.command, found.fingerprint, command, keyring)
        stream = await self._store.read_stream(found.user_id, to_version=found.to_version)
        return Prior(found.user_id, found.from_version, found.to_version, stream)
