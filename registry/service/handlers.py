"""Command handlers: the one write path (adapter, bus consumer and import tool all use it).

`CommandHandlers.handle(command)` reads the user's stream, decides, and in ONE transaction
appends the events (first), then takes/moves/releases reservations, destroys the user's data
key when the events erase them (crypto-shredding, `events.crypto.shred`), records the
command_id with the command's fingerprint (`registry.service.idempotency`) and, in inline mode,
projects. On any error nothing is written. The transaction is a unit of work
(`registry.service.unit_of_work`): the database's by default, or the in-memory one
(`registry.service.memory`) for `BaseCommandHandlers` without a database. On PostgreSQL the
same writes go in as ONE statement where it covers the command (`registry.service.at_once`),
decided on the user as these handlers last left them when they remember it
(`registry.service.states`), else on the stream read outside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import ConcurrencyError, Event, EventStore, Metadata, RecordedEvent, UserErased
from events.keyring import Keyring
from events.port import EventLog
from registry.domain.commands import Command, LinkOAuthAccount, RegisterUser
from registry.domain.decisions import UserState, decide, fold
from registry.errors import RegistryError, VersionConflictError
from registry.service import idempotency
from registry.service.at_once import AtOnce, DuplicateCommand
from registry.service.passwords import PasswordHasher, prepare
from registry.service.retry import once_more, retryable_sqlstate
from registry.service.states import States
from registry.service.unit_of_work import (
    InlineProjection,
    OwnProjection,
    SqlUnitOfWork,
    UnitOfWork,
    sqlite_write_lock,
)
from registry.service.unit_of_work import projected as tell_projected

__all__ = [
    "BaseCommandHandlers",
    "CommandHandlers",
    "InlineProjection",
    "Outcome",
    "OwnProjection",
    "profile_fields_of",
    "sqlite_write_lock",
]

log = logging.getLogger("registry.service.handlers")

#: attempts of read-decide-append when the stream moved under us and no expected_version was
#: stated (the command is re-decided against the new state each time)
MAX_ATTEMPTS = 30


@dataclass(frozen=True)
class Outcome:
    """What a command did: the user's stream version after it and the events it appended
    (none for a command that changed nothing). `duplicate`: this command_id was seen before
    and this is the first outcome again."""

    user_id: uuid.UUID
    version: int
    events: tuple[RecordedEvent, ...]
    duplicate: bool = False
    #: the events were projected in their own transaction (`own_projection` or inline)
    projected: bool = False


class _Retry(Exception):
    """Decide again: the stream moved (`conflict`), or the database chose this transaction
    as a deadlock or serialization victim."""

    def __init__(self, message: str, *, conflict: bool) -> None:
        super().__init__(message)
        self.conflict = conflict


class _Duplicate(Exception):
    """The command_id is recorded already (by a redelivery, or a reuse): the attempt rolled
    back; the record decides what to answer."""


def _user_id(command: Command) -> uuid.UUID:
    value = getattr(command, "user_id", None)
    assert isinstance(value, uuid.UUID)
    return value


class BaseCommandHandlers:
    """Carries out commands through a unit of work (see the module docstring for the
    transaction). `CommandHandlers` is this on the database."""

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        *,
        profile_fields: frozenset[str] | None = None,
        inline_projection: InlineProjection | None = None,
        password_helper: PasswordHasher | None = None,
        own_projection: OwnProjection | None = None,
    ) -> None:
        self.unit_of_work = unit_of_work
        self.store: EventLog = unit_of_work.store
        #: the user model's custom columns; None: any profile key is accepted
        self.profile_fields = profile_fields
        self.inline_projection = inline_projection
        self.password_helper = password_helper
        #: worker mode's fast path: project a command's own events in its transaction when
        #: the read model is exactly at the version it was decided on (else the projector does)
        self.own_projection = own_projection
        #: the users written last, to decide the next command on without a read
        self.states = States()

    async def handle(self, command: Command, *, imported: bool = False) -> Outcome:
        """Carry out `command`; raises a RegistryError subclass (nothing written) on refusal.

        The same `command_id` again with the same command returns the first outcome with
        `duplicate=True`; with another kind or content, `IdempotencyKeyReusedError` (nothing
        done; see `registry.service.idempotency`). With an `expected_version` that is not the user's
        version: VersionConflictError. Without one, a concurrent change to the same user makes
        this command be decided again, as does a deadlock or serialization failure (SQLSTATE
        40P01/40001); any other error surfaces as itself, after one attempt, nothing written.
        """
        sent = command
        command = await prepare(command, self.profile_fields, self.password_helper)
        # taken from the command as sent: before its password was hashed (with a random salt)
        # and before ids were generated, so a redelivery has the same fingerprint
        keyring = self._keyring()
        fingerprint = None if command.command_id is None else idempotency.fingerprint(sent, keyring)
        if isinstance(command, RegisterUser) and command.user_id is None:
            command = command.model_copy(update={"user_id": uuid.uuid4()})
        if isinstance(command, LinkOAuthAccount) and command.oauth_account_id is None:
            command = command.model_copy(update={"oauth_account_id": uuid.uuid4()})
        metadata = Metadata(
            command_id=command.command_id,
            correlation_id=command.correlation_id,
            causation_id=command.causation_id,
            actor=command.actor,
            imported=True if imported else None,
        )
        # a command_id seen before is not looked up first (a round trip for every command, for
        # the rare redelivery): recording it again finds it taken, the attempt rolls back
        # whole, and the first outcome is returned below (or the reuse refused)
        for attempt in range(MAX_ATTEMPTS):
            try:
                # a lost connection: once more, when the command_id makes that safe
                outcome = await once_more(
                    partial(self._attempt, command, metadata, fingerprint, first=attempt == 0),
                    what=command.name,
                    safe=command.command_id is not None,
                )
            except (_Retry, _Duplicate, RegistryError) as exc:
                if command.command_id is not None:
                    prior = await self._prior(sent, keyring)
                    if prior is not None:
                        return prior
                if isinstance(exc, RegistryError):
                    raise
                if (
                    isinstance(exc, _Retry)
                    and exc.conflict
                    and command.expected_version is not None
                ):
                    raise VersionConflictError(str(exc.__cause__ or exc)) from exc.__cause__
                if attempt == MAX_ATTEMPTS - 1:
                    raise VersionConflictError(
                        f"user {_user_id(command)} kept changing; gave up after "
                        f"{MAX_ATTEMPTS} attempts"
                    ) from exc.__cause__
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            if outcome.events:
                self.store.committed()
            log.debug(
                "command %s user=%s version=%s events=%d",
                command.name,
                outcome.user_id,
                outcome.version,
                len(outcome.events),
            )
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def _keyring(self) -> Keyring | None:
        crypto = self.store.crypto
        return None if crypto is None else crypto.keyring

    async def _attempt(
        self, command: Command, metadata: Metadata, fingerprint: str | None, *, first: bool
    ) -> Outcome:
        at_once = self.unit_of_work.at_once
        if at_once is not None:
            outcome = await self._attempt_at_once(at_once, command, metadata, fingerprint, first)
            if outcome is not None:
                return outcome
        lock = self.unit_of_work.write_lock
        if lock is None:
            return await self._attempt_in_tx(command, metadata, fingerprint, first)
        async with lock:
            return await self._attempt_in_tx(command, metadata, fingerprint, first)

    async def _attempt_in_tx(
        self, command: Command, metadata: Metadata, fingerprint: str | None, first: bool
    ) -> Outcome:
        """One read-decide-append transaction. Raises `_Retry` only for what deciding again
        can resolve (the stream moved; a deadlock or serialization failure), `_Duplicate` for
        a command_id recorded already; every other error as itself (nothing written)."""
        user_id = _user_id(command)
        try:
            async with self.unit_of_work.transaction() as tx:
                if first and isinstance(command, RegisterUser):
                    # a registration expects an empty stream: skip the read; if the id is
                    # taken the append conflicts and the next attempt reads and refuses
                    state = UserState(user_id=user_id)
                else:
                    state = fold(user_id, await tx.read_stream(user_id))
                if (
                    command.expected_version is not None
                    and command.expected_version != state.version
                ):
                    raise VersionConflictError(
                        f"user {user_id} is at version {state.version}, "
                        f"the command expected {command.expected_version}"
                    )
                new_events = decide(state, command)
                recorded: list[RecordedEvent] = []
                if new_events:
                    # events FIRST: on PostgreSQL the transaction id is assigned here
                    recorded = await tx.append(
                        user_id, new_events, expected_version=state.version, metadata=metadata
                    )
                    await tx.reserve(state, recorded)
                    if any(isinstance(r.event, UserErased) for r in recorded):
                        await tx.erase(user_id)
                version = recorded[-1].stream_version if recorded else state.version
                if command.command_id is not None and not await tx.record(
                    command, fingerprint, user_id, state.version, version
                ):
                    raise _Duplicate(command.command_id)
                projected = False
                inline, own = self.inline_projection, self.own_projection
                if recorded and (inline is not None or own is not None):
                    projected = await tx.project(recorded, state.version, inline=inline, own=own)
        except BaseException as exc:
            self._failed(exc, user_id)
            raise
        return Outcome(
            user_id=user_id, version=version, events=tuple(recorded), projected=projected
        )

    async def _attempt_at_once(
        self,
        at_once: AtOnce,
        command: Command,
        metadata: Metadata,
        fingerprint: str | None,
        first: bool,
    ) -> Outcome | None:
        """The attempt as one statement (`registry.service.at_once`): the decision on the
        user as these handlers left them or as their stream reads outside a transaction, then
        every write at once. None when one statement does not cover the command (the caller
        uses the transaction); raises as `_attempt_in_tx`."""
        user_id = _user_id(command)
        cached = self.states.take(user_id) if first else None
        inline, own = self.inline_projection, self.own_projection
        try:
            async with at_once.connect() as conn:
                state, new_events = await self._decide_at_once(
                    conn, at_once, command, cached, first=first
                )
                if not new_events and command.command_id is None:
                    self.states.put(state, (), state.version)
                    return Outcome(user_id=user_id, version=state.version, events=())
                write = await at_once.prepare(
                    conn,
                    state,
                    new_events,
                    metadata,
                    command,
                    fingerprint,
                    projection=inline if inline is not None else own,
                    inline=inline is not None,
                )
                if write is None:
                    return None
                recorded, projected = await at_once.write(conn, write)
        except DuplicateCommand as exc:
            self.store.forget_key(user_id)
            raise _Duplicate(str(command.command_id)) from exc
        except BaseException as exc:
            self._failed(exc, user_id)
            raise
        if projected and write.projection is not None:
            tell_projected(at_once.engine, write.projection.name, [r.event_id for r in recorded])
        self.states.put(state, new_events, recorded[-1].stream_version)
        return Outcome(
            user_id=user_id,
            version=recorded[-1].stream_version,
            events=tuple(recorded),
            projected=projected,
        )

    async def _decide_at_once(
        self,
        conn: AsyncConnection,
        at_once: AtOnce,
        command: Command,
        cached: UserState | None,
        *,
        first: bool,
    ) -> tuple[UserState, list[Event]]:
        """The state to decide on and the events deciding gives. On the user as these
        handlers left them (`cached`), a change is appended guarded on its version; a refusal
        or "nothing to do" there could be stale, and is decided on the stream instead."""
        user_id = _user_id(command)
        if cached is not None and command.expected_version in (None, cached.version):
            with contextlib.suppress(RegistryError):
                new_events = decide(cached, command)
                if new_events:
                    return cached, new_events
        if first and isinstance(command, RegisterUser):
            state = UserState(user_id=user_id)  # a registration expects no stream
        else:
            state = fold(user_id, await at_once.read_stream(conn, user_id))
        if command.expected_version is not None and command.expected_version != state.version:
            raise VersionConflictError(
                f"user {user_id} is at version {state.version}, "
                f"the command expected {command.expected_version}"
            )
        return state, decide(state, command)

    def _failed(self, exc: BaseException, user_id: uuid.UUID) -> None:
        """An attempt failed and wrote nothing: a data key made for the stream in it was not
        stored; raise `_Retry` for what deciding again can resolve (else the caller re-raises
        `exc`)."""
        self.store.forget_key(user_id)
        if isinstance(exc, ConcurrencyError):
            raise _Retry(str(exc), conflict=True) from exc
        code = retryable_sqlstate(exc) if isinstance(exc, DBAPIError) else None
        if code is not None:
            raise _Retry(f"SQLSTATE {code}", conflict=False) from exc

    async def _prior(self, command: Command, keyring: Keyring | None) -> Outcome | None:
        """The first outcome of the command's id if it was processed already, or None.
        Raises `IdempotencyKeyReusedError` when the id was used for another command."""
        prior = await self.unit_of_work.prior(command, keyring)
        if prior is None:
            return None
        recorded = tuple(e for e in prior.stream if e.stream_version > prior.from_version)
        return Outcome(prior.user_id, prior.to_version, recorded, duplicate=True)


class CommandHandlers(BaseCommandHandlers):
    """The command handlers on the database: `engine` and `store` make the unit of work
    (`SqlUnitOfWork`) unless another one is given."""

    store: EventStore

    def __init__(
        self,
        engine: AsyncEngine,
        store: EventStore,
        *,
        profile_fields: frozenset[str] | None = None,
        inline_projection: InlineProjection | None = None,
        password_helper: PasswordHasher | None = None,
        own_projection: OwnProjection | None = None,
        unit_of_work: UnitOfWork | None = None,
    ) -> None:
        super().__init__(
            unit_of_work if unit_of_work is not None else SqlUnitOfWork(engine, store),
            profile_fields=profile_fields,
            inline_projection=inline_projection,
            password_helper=password_helper,
            own_projection=own_projection,
        )
        self.engine = engine
        self.store = store


def profile_fields_of(user_table: Table, builtin: frozenset[str]) -> frozenset[str]:
    """The custom columns of a user model's table: its columns minus the built-in ones."""
    return frozenset(c.key for c in user_table.columns) - builtin
