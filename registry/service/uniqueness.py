"""Email (and OAuth account) uniqueness, kept by reservation rows on the write side.

`reserve(conn, state, recorded)` runs inside the append's transaction, after the events were
inserted: it takes, moves or releases the reservations the new events imply. A reservation
that another user holds raises EmailAlreadyRegisteredError (or OAuthAccountAlreadyLinkedError)
and the caller rolls the whole transaction back, events included. The database's primary key
decides races: of 50 concurrent registrations of one address exactly one commits.
`UserDeleted` and `UserErased` release every reservation of the user (the address is free
again; an erased user's address and OAuth account ids are nowhere in clear afterwards).
`reserve_in` is the same walk over any `Reservations` (the in-memory unit of work keeps dicts).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from events import (
    OAuthAccountLinked,
    OAuthAccountUpdated,
    RecordedEvent,
    UserDeleted,
    UserEmailChanged,
    UserErased,
    UserRegistered,
    normalise_email,
)
from events.claims import taking, took
from registry.domain.decisions import UserState
from registry.errors import EmailAlreadyRegisteredError, OAuthAccountAlreadyLinkedError
from registry.tables import email_reservations, oauth_reservations

#: built once: SQLAlchemy reuses their compiled form
_TAKE_EMAIL = taking(email_reservations, email_reservations.c.email)
_TAKE_OAUTH = taking(oauth_reservations, oauth_reservations.c.account_id)


class Reservations(Protocol):
    """Where reservations are kept, within the append's transaction. A take returns False
    (nothing written) when the key is held already."""

    async def take_email(self, email: str, user_id: uuid.UUID) -> bool: ...

    async def release_email(self, email: str, user_id: uuid.UUID) -> None: ...

    async def take_oauth(
        self, oauth_name: str, account_id: str, user_id: uuid.UUID, oauth_account_id: uuid.UUID
    ) -> bool: ...

    async def release_oauth(self, oauth_name: str, account_id: str) -> None: ...

    async def release_all(self, user_id: uuid.UUID) -> None:
        """Every reservation the user holds: emails, then OAuth accounts."""
        ...


class SqlReservations:
    """The reservation rows, written on the caller's connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def take_email(self, email: str, user_id: uuid.UUID) -> bool:
        row = {"email": email, "user_id": user_id, "reserved_at": datetime.now(UTC)}
        return await took(self.conn, _TAKE_EMAIL, row)

    async def release_email(self, email: str, user_id: uuid.UUID) -> None:
        await self.conn.execute(
            delete(email_reservations).where(
                email_reservations.c.email == email, email_reservations.c.user_id == user_id
            )
        )

    async def take_oauth(
        self, oauth_name: str, account_id: str, user_id: uuid.UUID, oauth_account_id: uuid.UUID
    ) -> bool:
        row = {
            "oauth_name": oauth_name,
            "account_id": account_id,
            "user_id": user_id,
            "oauth_account_id": oauth_account_id,
        }
        return await took(self.conn, _TAKE_OAUTH, row)

    async def release_oauth(self, oauth_name: str, account_id: str) -> None:
        await self.conn.execute(
            delete(oauth_reservations).where(
                oauth_reservations.c.oauth_name == oauth_name,
                oauth_reservations.c.account_id == account_id,
            )
        )

    async def release_all(self, user_id: uuid.UUID) -> None:
        await self.conn.execute(
            delete(email_reservations).where(email_reservations.c.user_id == user_id)
        )
        await self.conn.execute(
            delete(oauth_reservations).where(oauth_reservations.c.user_id == user_id)
        )


async def _take_email(kept: Reservations, email: str, state: UserState) -> None:
    if not await kept.take_email(email, state.user_id):
        raise EmailAlreadyRegisteredError("a user with this email address is already registered")


async def _take_oauth(
    kept: Reservations,
    state: UserState,
    oauth_name: str,
    account_id: str,
    oauth_account_id: uuid.UUID,
) -> None:
    if not await kept.take_oauth(oauth_name, account_id, state.user_id, oauth_account_id):
        raise OAuthAccountAlreadyLinkedError(
            f"{oauth_name} account {account_id} is already linked to a user"
        )


async def reserve(
    conn: AsyncConnection, before: UserState, recorded: Sequence[RecordedEvent]
) -> None:
    """Take, move or release reservations for the events just appended to `before`'s stream."""
    await reserve_in(SqlReservations(conn), before, recorded)


async def reserve_in(
    kept: Reservations, before: UserState, recorded: Sequence[RecordedEvent]
) -> None:
    """`reserve` wherever the reservations are kept."""
    current = normalise_email(before.email) if before.alive else None
    accounts = {a.id: (a.oauth_name, a.account_id) for a in before.oauth_accounts.values()}
    for item in recorded:
        event = item.event
        if isinstance(event, UserRegistered | UserEmailChanged):
            wanted = normalise_email(event.email)
            if wanted == current:
                continue
            if current is not None:
                await kept.release_email(current, before.user_id)
            await _take_email(kept, wanted, before)
            current = wanted
        elif isinstance(event, OAuthAccountLinked):
            oauth_id = event.oauth_account_id
            await _take_oauth(kept, before, event.oauth_name, event.account_id, oauth_id)
            accounts[oauth_id] = (event.oauth_name, event.account_id)
        elif isinstance(event, OAuthAccountUpdated) and "account_id" in event.changes:
            name, old_id = accounts[event.oauth_account_id]
            new_id = str(event.changes["account_id"])
            # moved as release + take (not an UPDATE of the key, which can only report a taken
            # id by failing); a taken id rolls the whole transaction back, release included
            await kept.release_oauth(name, old_id)
            await _take_oauth(kept, before, name, new_id, event.oauth_account_id)
            accounts[event.oauth_account_id] = (name, new_id)
        elif isinstance(event, UserDeleted | UserErased):
            await kept.release_all(before.user_id)
            current = None
