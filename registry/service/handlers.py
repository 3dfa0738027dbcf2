"""Command handlers: the one write path (adapter, bus consumer and import tool all use it).

`CommandHandlers.handle(command)` reads the user's stream, decides, and in ONE transaction
appends the events (first), then takes/moves/releases reservations, destroys the user's data
key when the events erase them (crypto-shredding, `events.crypto.shred`), records the
command_id with the command's fingerprint (`registry.service.idempotency`) and, in inline mode,
projects. On any error nothing is written.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import ConcurrencyError, EventStore, Metadata, RecordedEvent, UserErased
from events.crypto import Keyring, shred
from registry.domain.commands import Command, LinkOAuthAccount, RegisterUser
from registry.domain.decisions import UserState, decide, fold
from registry.errors import RegistryError, VersionConflictError
from registry.service import idempotency
from registry.service.passwords import PasswordHasher, prepare
from registry.service.retry import once_more, retryable_sqlstate
from registry.service.uniqueness import reserve

log = logging.getLogger("registry.service.handlers")

#: attempts of read-decide-append when the stream moved under us and no expected_version was
#: stated (the command is re-decided against the new state each time)
MAX_ATTEMPTS = 30


class OwnProjection(Protocol):
    """What the writer-side fast path needs (projections.UserProjection fits)."""

    async def apply_own(
        self, conn: AsyncConnection, recorded: Sequence[RecordedEvent], after_version: int
    ) -> bool: ...


class InlineProjection(OwnProjection, Protocol):
    """What inline mode needs of a projection (projections.UserProjection fits): the fast
    path, and the fold for when the read model is not where the command was decided."""

    name: str

    async def apply(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None: ...


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


_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def sqlite_write_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    """One lock per SQLite engine, shared by every CommandHandlers on it; None elsewhere."""
    if engine.dialect.name != "sqlite":
        return None
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine.sync_engine] = asyncio.Lock()
    return lock


def _user_id(command: Command) -> uuid.UUID:
    value = getattr(command, "user_id", None)
    assert isinstance(value, uuid.UUID)
    return value


class CommandHandlers:
    """Carries out commands against the log. See the module docstring for the transaction."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: EventStore,
        *,
        profile_fields: frozenset[str] | None = None,
        inline_projection: InlineProjection | None = None,
        password_helper: PasswordHasher | None = None,
        own_projection: OwnProjection | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        #: the user model's custom columns; None: any profile key is accepted
        self.profile_fields = profile_fields
        self.inline_projection = inline_projection
        self.password_helper = password_helper
        #: worker mode's fast path: project a command's own events in its transaction when
        #: the read model is exactly at the version it was decided on (else the projector does)
        self.own_projection = own_projection
        self._sqlite_writes = sqlite_write_lock(engine)

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
        if self._sqlite_writes is None:
            return await self._attempt_in_tx(command, metadata, fingerprint, first)
        # SQLite has one writer at a time anyway: queue this process's writers here instead of
        # in the driver's busy handler, where each waiter holds a pooled connection (and a
        # thread) for up to the busy timeout
        async with self._sqlite_writes:
            return await self._attempt_in_tx(command, metadata, fingerprint, first)

    async def _attempt_in_tx(
        self, command: Command, metadata: Metadata, fingerprint: str | None, first: bool
    ) -> Outcome:
        """One read-decide-append transaction. Raises `_Retry` only for what deciding again
        can resolve (the stream moved; a deadlock or serialization failure), `_Duplicate` for
        a command_id recorded already; every other error as itself (nothing written)."""
        user_id = _user_id(command)
        try:
            async with self.engine.begin() as conn:
                if first and isinstance(command, RegisterUser):
                    # a registration expects an empty stream: skip the read; if the id is
                    # taken the append conflicts and the next attempt reads and refuses
                    state = UserState(user_id=user_id)
                else:
                    state = fold(user_id, await self.store.read_stream(user_id, conn=conn))
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
                    recorded = await self.store.append(
                        user_id,
                        new_events,
                        expected_version=state.version,
                        metadata=metadata,
                        conn=conn,
                    )
                    await reserve(conn, state, recorded)
                    if any(isinstance(r.event, UserErased) for r in recorded):
                        await shred(conn, self.store.crypto, user_id)
                        await idempotency.forget(conn, user_id)
                version = recorded[-1].stream_version if recorded else state.version
                if command.command_id is not None and not await idempotency.record(
                    conn, command, fingerprint, user_id, state.version, version
                ):
                    raise _Duplicate(command.command_id)
                projected = False
                if recorded and self.inline_projection is not None:
                    inline = self.inline_projection
                    if not await inline.apply_own(conn, recorded, state.version):
                        await inline.apply(conn, recorded)
                    projected = True
                elif recorded and self.own_projection is not None:
                    projected = await self.own_projection.apply_own(conn, recorded, state.version)
        except BaseException as exc:
            # rolled back: a data key made for the stream in this transaction was not stored
            self.store.forget_key(user_id)
            if isinstance(exc, ConcurrencyError):
                raise _Retry(str(exc), conflict=True) from exc
            code = retryable_sqlstate(exc) if isinstance(exc, DBAPIError) else None
            if code is not None:
                raise _Retry(f"SQLSTATE {code}", conflict=False) from exc
            raise
        return Outcome(
            user_id=user_id, version=version, events=tuple(recorded), projected=projected
        )

    async def _prior(self, command: Command, keyring: Keyring | None) -> Outcome | None:
        """The first outcome of the command's id if it was processed already, or None.
        Raises `IdempotencyKeyReusedError` when the id was used for another command."""
        async with self.engine.connect() as conn:
            row = await idempotency.prior(conn, command, keyring)
            if row is None:
                return None
            stream = await self.store.read_stream(row.user_id, to_version=row.to_version, conn=conn)
        recorded = tuple(e for e in stream if e.stream_version > row.from_version)
        return Outcome(row.user_id, row.to_version, recorded, duplicate=True)


def profile_fields_of(user_table: Any, builtin: frozenset[str]) -> frozenset[str]:
    """The custom columns of a user model: its columns minus the built-in ones."""
    return frozenset(c.key for c in user_table.__table__.columns) - builtin
