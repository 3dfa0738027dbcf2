"""Email (and OAuth account) uniqueness, kept by reservation rows on the write side.

`reserve(conn, state, recorded)` runs inside the append's transaction, after the events were
inserted: it takes, moves or releases the reservations the new events imply. A reservation
that another user holds raises EmailAlreadyRegisteredError (or OAuthAccountAlreadyLinkedError)
and the caller rolls the whole transaction back, events included. The database's primary key
decides races: of 50 concurrent registrations of one address exactly one commits.
`UserDeleted` and `UserErased` release every reservation of the user (the address is free
again; an erased user's address and OAuth account ids are nowhere in clear afterwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
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
from registry.decisions import UserState
from registry.errors import EmailAlreadyRegisteredError, OAuthAccountAlreadyLinkedError
from registry.tables import email_reservations, oauth_reservations

#: built once: SQLAlchemy reuses its compiled form (one is built per call otherwise)
_INSERT_EMAIL = insert(email_reservations)


async def _take_email(conn: AsyncConnection, email: str, state: UserState) -> None:
    try:
        await conn.execute(
            _INSERT_EMAIL,
            {"email": email, "user_id": state.user_id, "reserved_at": datetime.now(UTC)},
        )
    except IntegrityError as exc:
        raise EmailAlreadyRegisteredError(
            "a user with this email address is already registered"
        ) from exc


async def _take_oauth(conn: AsyncConnection, state: UserState, event: OAuthAccountLinked) -> None:
    try:
        await conn.execute(
            insert(oauth_reservations).values(
                oauth_name=event.oauth_name,
                account_id=event.account_id,
                user_id=state.user_id,
                oauth_account_id=event.oauth_account_id,
            )
        )
    except IntegrityError as exc:
        raise OAuthAccountAlreadyLinkedError(
            f"{event.oauth_name} account {event.account_id} is already linked to a user"
        ) from exc


async def reserve(
    conn: AsyncConnection, before: UserState, recorded: Sequence[RecordedEvent]
) -> None:
    """Take, move or release reservations for the events just appended to `before`'s stream."""
    current = normalise_email(before.email) if before.alive else None
    accounts = {a.id: (a.oauth_name, a.account_id) for a in before.oauth_accounts.values()}
    for item in recorded:
        event = item.event
        if isinstance(event, UserRegistered | UserEmailChanged):
            wanted = normalise_email(event.email)
            if wanted == current:
                continue
            if current is not None:
                await conn.execute(
                    delete(email_reservations).where(
                        email_reservations.c.email == current,
                        email_reservations.c.user_id == before.user_id,
                    )
                )
            await _take_email(conn, wanted, before)
            current = wanted
        elif isinstance(event, OAuthAccountLinked):
            await _take_oauth(conn, before, event)
            accounts[event.oauth_account_id] = (event.oauth_name, event.account_id)
        elif isinstance(event, OAuthAccountUpdated) and "account_id" in event.changes:
            name, old_id = accounts[event.oauth_account_id]
            new_id = str(event.changes["account_id"])
            try:
                await conn.execute(
                    update(oauth_reservations)
                    .where(
                        oauth_reservations.c.oauth_name == name,
                        oauth_reservations.c.account_id == old_id,
                    )
                    .values(account_id=new_id)
                )
            except IntegrityError as exc:
                raise OAuthAccountAlreadyLinkedError(
                    f"{name} account {new_id} is already linked to a user"
                ) from exc
            accounts[event.oauth_account_id] = (name, new_id)
        elif isinstance(event, UserDeleted | UserErased):
            await conn.execute(
                delete(email_reservations).where(email_reservations.c.user_id == before.user_id)
            )
            await conn.execute(
                delete(oauth_reservations).where(oauth_reservations.c.user_id == before.user_id)
            )
            current = None
