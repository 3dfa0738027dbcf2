"""Erasure (crypto-shredding) through the command handlers, on SQLite and PostgreSQL.

A user registers, changes email, sets a password and links (and updates) an OAuth account;
`EraseUser` then destroys their data key in the same transaction as `UserErased`. Afterwards a
scan of every table in the database (events with their payloads, metadata and sealed bytes, data
keys, read model, reservations, processed commands, checkpoints, Alembic's own table) finds none
of their personal values in clear; a replay rebuilds the same read model for everyone else and
keeps them absent; the address can be registered again; erasing again appends nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, UserEmailChanged, UserErased, UserRegistered
from events.crypto import ERASED, Crypto, Keyring, MasterKey, attach
from events.tables import data_keys, events
from projections import OAuthAccount, User, UserProjection
from projections.replay import replay
from registry.domain.commands import (
    DeleteUser,
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateUser,
)
from registry.errors import UserNotFoundError
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers, Outcome
from registry.tables import email_reservations, oauth_reservations, processed_commands
from tests.support.erasure import (
    PERSONAL_COLUMN,
    FastHasher,
    assert_nowhere,
    dump_every_table,
    full_life,
)


@pytest.fixture
async def handlers(engine: AsyncEngine) -> AsyncIterator[CommandHandlers]:
    """The production schema (Alembic), a Crypto with a test master key, inline projection
    into the default models (the read model commits with the events)."""
    await ensure_schema(engine, User, OAuthAccount)
    attach(engine, Crypto(Keyring(MasterKey.generate()), personal_profile={PERSONAL_COLUMN}))
    try:
        yield CommandHandlers(
            engine,
            EventStore(engine),
            password_helper=FastHasher(),
            inline_projection=UserProjection(User, OAuthAccount),
        )
    finally:
        attach(engine, None)


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        users = {r["id"]: dict(r) for r in (await conn.execute(select(User.__table__))).mappings()}
        oauth = {
            r["id"]: dict(r)
            for r in (await conn.execute(select(OAuthAccount.__table__))).mappings()
        }
    return {"users": users, "oauth": oauth}


def without(snap: dict[str, Any], user_id: uuid.UUID) -> dict[str, Any]:
    return {
        "users": {k: v for k, v in snap["users"].items() if k != user_id},
        "oauth": {k: v for k, v in snap["oauth"].items() if v["user_id"] != user_id},
    }


async def count(engine: AsyncEngine, table: Table, *where: ColumnElement[bool]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


async def test_erasure_leaves_nothing_readable_and_the_rest_replays_the_same(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    victim = await full_life(handlers, "victim")
    others = [await full_life(handlers, f"other{i}") for i in range(3)]
    before = await snapshot(engine)
    assert victim.user_id in before["users"]
    # the scan can fail: before erasure the victim's email is in the read model and the
    # reservation table
    with pytest.raises(AssertionError, match="still in table"):
        assert_nowhere(await dump_every_table(engine), victim.needles)

    out = await handlers.handle(EraseUser(user_id=victim.user_id, command_id="erase-victim"))
    assert [type(r.event) for r in out.events] == [UserErased]
    assert out.version == 6
    assert not out.duplicate

    assert_nowhere(await dump_every_table(engine), victim.needles)
    # the key row stays as a marker, without key material
    async with engine.connect() as conn:
        key = (
            await conn.execute(select(data_keys).where(data_keys.c.stream_id == victim.user_id))
        ).one()
    assert key.wrapped_key is None
    assert key.master_key_id is None
    assert key.erased_at is not None
    assert (
        await count(engine, email_reservations, email_reservations.c.user_id == victim.user_id) == 0
    )
    assert (
        await count(engine, oauth_reservations, oauth_reservations.c.user_id == victim.user_id) == 0
    )

    # everyone else exactly as before; the victim gone from the read model
    live = await snapshot(engine)
    assert live == without(before, victim.user_id)
    for other in others:  # their data is still sealed and opens
        stream = await handlers.store.read_stream(other.user_id)
        assert not any(r.erased for r in stream)
        assert stream[0].event.email == other.needles[0]  # type: ignore[attr-defined]  # the log gives the Event union

    # the history stays, every personal value erased
    stream = await handlers.store.read_stream(victim.user_id)
    assert len(stream) == 6
    assert all(r.erased for r in stream)
    assert stream[0].event.email == ERASED  # type: ignore[attr-defined]  # the log gives the Event union
    assert stream[0].event.profile == {PERSONAL_COLUMN: ERASED, "plan": "gold"}  # type: ignore[attr-defined]  # the log gives the Event union

    # a replay of the whole log: same rows for everyone else, the victim still absent
    await replay(engine, UserProjection(User, OAuthAccount), batch_size=7)
    assert await snapshot(engine) == live
    assert_nowhere(await dump_every_table(engine), victim.needles)


async def test_the_address_can_be_registered_again_by_a_new_user(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    victim = await full_life(handlers, "again")
    await handlers.handle(EraseUser(user_id=victim.user_id))
    # the second address (current at erasure) and the first (released when it changed)
    again = await handlers.handle(
        RegisterUser(email="SECOND.again@example.org", hashed_password="h")
    )
    assert again.user_id != victim.user_id
    first = await handlers.handle(
        RegisterUser(email="first.again@example.com", hashed_password="h")
    )
    linked = await handlers.handle(
        LinkOAuthAccount.model_validate(
            {
                "user_id": first.user_id,
                "oauth_name": "github",
                "access_token": "t",
                "account_id": "gh-account-again",
                "account_email": "x@example.net",
            }
        )
    )
    assert linked.version == 2  # the OAuth account id was released too
    live = await snapshot(engine)
    assert {again.user_id, first.user_id} <= set(live["users"])
    assert victim.user_id not in live["users"]


async def test_erasing_twice_is_accepted_and_appends_nothing(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    victim = await full_life(handlers, "twice")
    first = await handlers.handle(EraseUser(user_id=victim.user_id))
    total = await count(engine, events)
    second = await handlers.handle(EraseUser(user_id=victim.user_id))
    assert second.events == ()
    assert second.version == first.version == 6
    assert await count(engine, events) == total
    # a repeated command id answers the first outcome, also after erasure
    dup = await handlers.handle(EraseUser(user_id=victim.user_id, command_id="e1"))
    again = await handlers.handle(EraseUser(user_id=victim.user_id, command_id="e1"))
    assert again.duplicate
    assert (dup.version, again.version) == (6, 6)
    assert await count(engine, events) == total
    assert await count(engine, processed_commands, processed_commands.c.command_id == "e1") == 1


async def test_other_commands_on_an_erased_user_are_refused(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    victim = await full_life(handlers, "refused")
    await handlers.handle(EraseUser(user_id=victim.user_id))
    total = await count(engine, events)
    for command in (
        UpdateUser(user_id=victim.user_id, is_verified=True),
        DeleteUser(user_id=victim.user_id),
    ):
        with pytest.raises(UserNotFoundError, match="was erased"):
            await handlers.handle(command)
    with pytest.raises(UserNotFoundError, match="does not exist"):
        await handlers.handle(EraseUser(user_id=uuid.uuid4()))
    assert await count(engine, events) == total


async def test_a_deleted_user_can_be_erased(engine: AsyncEngine, handlers: CommandHandlers) -> None:
    victim = await full_life(handlers, "deleted")
    await handlers.handle(DeleteUser(user_id=victim.user_id))
    out = await handlers.handle(EraseUser(user_id=victim.user_id))
    assert [r.event_type for r in out.events] == ["UserErased"]
    assert out.version == 7
    assert_nowhere(await dump_every_table(engine), victim.needles)


async def test_erase_racing_with_an_email_change_leaves_no_reservation(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    """Whichever commits first, the erased user holds no address afterwards."""
    for i in range(4):
        victim = await full_life(handlers, f"race{i}")
        results = await asyncio.gather(
            handlers.handle(EraseUser(user_id=victim.user_id)),
            handlers.handle(UpdateUser(user_id=victim.user_id, email=f"moved.race{i}@example.com")),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException)
        # the change either went first (then erased with the rest) or was refused
        assert isinstance(results[1], Outcome | UserNotFoundError), results[1]
        assert (
            await count(engine, email_reservations, email_reservations.c.user_id == victim.user_id)
            == 0
        )
        assert_nowhere(
            await dump_every_table(engine), [*victim.needles, f"moved.race{i}@example.com"]
        )


async def test_events_stored_in_clear_before_encryption_are_erased_too(
    engine: AsyncEngine, handlers: CommandHandlers
) -> None:
    """A user written before encryption was on (no Crypto: personal values in clear)."""
    legacy = EventStore(engine, crypto=None)
    uid = uuid.uuid4()
    await legacy.append(
        uid,
        [
            UserRegistered(email="legacy.user@example.com", hashed_password="$legacy$hash"),
            UserEmailChanged(email="legacy.second@example.com"),
        ],
        expected_version=0,
    )
    needles = ["legacy.user@example.com", "legacy.second@example.com", "$legacy$hash"]
    with pytest.raises(AssertionError, match="still in table events"):
        assert_nowhere(await dump_every_table(engine), needles)
    out = await handlers.handle(EraseUser(user_id=uid))
    assert out.version == 3
    assert_nowhere(await dump_every_table(engine), needles)
    assert all(r.erased for r in await handlers.store.read_stream(uid))
