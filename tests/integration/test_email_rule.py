"""The one email rule end to end, on SQLite and PostgreSQL: hostile addresses through the bus
reply path (`replies.process` with the real handlers), the adapter and the read API. Each one
is refused with INVALID_COMMAND (nothing appended) or registered and then found by
`get_by_email` and `GET /users?email=` however it is typed; twins collide. The expected
outcomes are one table, so both backends agree with it (and so with each other)."""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi_users.exceptions import UserAlreadyExists
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from events import UserEmailChanged, UserRegistered
from events.tables import events
from projections import OAuthAccount, User, UserProjection
from registry import EventSourcedUserDatabase
from registry.adapter.runtime import use_handlers
from registry.bus.replies import Reply, process
from registry.errors import InvalidCommandError
from registry.service.handlers import CommandHandlers
from registry.tables import email_reservations
from registry.tables import metadata as registry_metadata
from tests.support.adapter import UserDatabase
from tests.support.api import Api, open_api

HASH = "fake$hash"
NFC = unicodedata.normalize("NFC", "José@example.com")
NFD = unicodedata.normalize("NFD", "José@example.com")

#: typed address -> (canonical form, other spellings that must find it, lookalikes that must not)
ACCEPTED: dict[str, tuple[str, list[str], list[str]]] = {
    "  Spaced@example.com  ": (
        "spaced@example.com",
        ["Spaced@example.com", "SPACED@EXAMPLE.COM", " spaced@example.com"],
        [],
    ),
    "İnfo@example.com": (
        "i\u0307nfo@example.com",
        ["İnfo@example.com", "İNFO@EXAMPLE.COM", "i\u0307nfo@example.com"],
        ["info@example.com", "Info@example.com"],
    ),
    NFC: (NFC.lower(), [NFD, NFD.upper(), NFC.upper()], ["jose@example.com"]),
    "Straße@Example.com": ("straße@example.com", ["STRAßE@example.com"], ["strasse@example.com"]),
    "user@xn--bcher-kva.de": ("user@bücher.de", ["user@BÜCHER.de", "USER@XN--BCHER-KVA.DE"], []),
    "Иван@Пример.рф": ("иван@пример.рф", ["ИВАН@ПРИМЕР.РФ"], []),
}
#: typed address -> the registered address it collides with
TWINS = {
    NFD: NFC,
    "USER@bücher.de": "user@xn--bcher-kva.de",
    "spaced@EXAMPLE.com": "  Spaced@example.com  ",
}
REFUSED = [
    "not-an-email",
    "     ",
    "fullwidth\uff20example.com",
    "\uff46ullwidth@example.com",
    "zero\u200bwidth@example.com",
    "nul\x00byte@example.com",
    "\u202eevil@example.com",
    "p\u0430ypal@example.com",  # a Cyrillic U+0430 among Latin letters
    "user@ex\u0430mple.com",
    "İ" * 200 + "@example.com",  # grows past 320 characters when lower-cased
]


class FastHasher:
    def hash(self, password: str) -> str:
        return "fake$" + password[::-1]


@dataclass
class World:
    api: Api
    handlers: CommandHandlers
    sessions: async_sessionmaker[AsyncSession]

    async def send(self, name: str, payload: dict[str, Any]) -> Reply:
        """What the bus consumer does with a message body (the same function, real handlers)."""
        return await process(json.dumps(payload), name, self.handlers.handle, max_bytes=65536)

    async def find(self, email: str) -> tuple[uuid.UUID | None, set[str]]:
        """(the adapter's `get_by_email`, the ids `GET /users?email=` lists)."""
        async with self.sessions() as session:
            user = await EventSourcedUserDatabase(session, User, OAuthAccount).get_by_email(email)
        response = await self.api.client.get("/users", params={"email": email})
        assert response.status_code == 200, response.text
        return (user.id if user else None), {u["id"] for u in response.json()["items"]}


@pytest.fixture
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    api = await open_api(engine)
    async with engine.begin() as conn:
        await conn.run_sync(registry_metadata.create_all)
    # inline projection: the read model shows each write as soon as it returns
    handlers = CommandHandlers(
        engine,
        api.store,
        inline_projection=UserProjection(User, OAuthAccount),
        password_helper=FastHasher(),
    )
    use_handlers(engine, handlers, User, OAuthAccount)
    try:
        yield World(api, handlers, async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await api.client.aclose()


async def log_size(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events)) or 0)


async def test_hostile_addresses_are_refused_or_registered_and_found(
    world: World, engine: AsyncEngine
) -> None:
    registered: dict[str, uuid.UUID] = {}
    for typed, (canonical, spellings, lookalikes) in ACCEPTED.items():
        reply = await world.send("register", {"email": typed, "hashed_password": HASH})
        assert reply.accepted, (typed, reply)
        assert reply.user_id is not None
        registered[typed] = reply.user_id
        for spelling in [typed, canonical, *spellings]:
            assert await world.find(spelling) == (reply.user_id, {str(reply.user_id)}), spelling
        for other in lookalikes:
            assert await world.find(other) == (None, set()), other
    async with engine.connect() as conn:
        stored = {
            row[0]: row[1]
            for row in await conn.execute(select(User.__table__.c.email, User.__table__.c.id))
        }
        reservations = select(email_reservations.c.email, email_reservations.c.user_id)
        reserved = {row[0]: row[1] for row in await conn.execute(reservations)}
    # storage and reservation hold the same canonical string
    expected = {ACCEPTED[t][0]: uid for t, uid in registered.items()}
    assert stored == expected
    assert reserved == expected

    before = await log_size(engine)
    for typed, owner in TWINS.items():
        reply = await world.send("register", {"email": typed, "hashed_password": HASH})
        assert reply.code == "EMAIL_ALREADY_REGISTERED", (typed, reply)
        async with world.sessions() as session:
            db = UserDatabase(session, User, OAuthAccount)
            with pytest.raises(UserAlreadyExists):
                await db.create({"email": typed, "hashed_password": HASH})
        assert (await world.find(typed))[0] == registered[owner]
    for typed in REFUSED:
        reply = await world.send("register", {"email": typed, "hashed_password": HASH})
        assert (reply.status, reply.code) == ("rejected", "INVALID_COMMAND"), (typed, reply)
        assert reply.message
        assert "email" in reply.message
        async with world.sessions() as session:
            db = UserDatabase(session, User, OAuthAccount)
            with pytest.raises(InvalidCommandError, match="email"):
                await db.create({"email": typed, "hashed_password": HASH})
    assert await log_size(engine) == before  # nothing appended by any refusal


async def test_an_email_change_takes_the_canonical_form_and_frees_the_old_one(
    world: World,
) -> None:
    first = await world.send("register", {"email": "Old@Example.com", "hashed_password": HASH})
    assert first.accepted
    uid = str(first.user_id)
    changed = await world.send("update", {"user_id": uid, "email": "  NEW@example.COM "})
    assert changed.accepted, changed
    assert (await world.find("new@example.com"))[0] == first.user_id
    assert (await world.find("old@example.com"))[0] is None
    again = await world.send("register", {"email": "OLD@example.com", "hashed_password": HASH})
    assert again.accepted, again
    refused = await world.send("update", {"user_id": uid, "email": "new\u200b@example.com"})
    assert refused.code == "INVALID_COMMAND"


async def test_events_stored_under_the_old_rule_are_projected_canonical(world: World) -> None:
    # an old log: the address as typed (the projection, live or replayed, normalises it)
    uid = uuid.uuid4()
    await world.api.append(
        uid, [UserRegistered(email="  Legacy@Example.COM ", hashed_password=HASH)]
    )
    assert await world.find("legacy@example.com") == (uid, {str(uid)})
    await world.api.append(uid, [UserEmailChanged(email="Moved@EXAMPLE.com")])
    assert await world.find("  MOVED@example.com") == (uid, {str(uid)})
    body = (await world.api.client.get(f"/users/{uid}")).json()
    assert body["email"] == "moved@example.com"
    as_of = await world.api.client.get(f"/users/{uid}", params={"as_of": "2999-01-01T00:00:00Z"})
    assert as_of.json()["email"] == "moved@example.com"  # time travel shows the same form
