"""The read API after an erasure, on SQLite and PostgreSQL: the user is gone (404, also as of
any instant, saying they were erased), their history stays with every personal value
"[erased]" and `erased: true`, and no response carries any of their personal data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events.crypto import Crypto, Keyring, MasterKey, attach
from registry.api import create_app
from registry.domain.commands import EraseUser
from registry.service.handlers import CommandHandlers
from tests.support.api import auth, make_container
from tests.support.bus import create_tables
from tests.support.erasure import FastHasher, Victim, full_life


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[tuple[httpx.AsyncClient, CommandHandlers]]:
    await create_tables(engine)
    attach(engine, Crypto(Keyring(MasterKey.generate()), personal_profile={"nickname"}))
    container = make_container(engine, projection_mode="inline")
    handlers = container.handlers()
    handlers.password_helper = FastHasher()
    transport = httpx.ASGITransport(app=create_app(container))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://registry.test", headers=auth()
        ) as client:
            yield client, handlers
    finally:
        attach(engine, None)


def assert_absent(text: str, victim: Victim) -> None:
    for needle in victim.needles:
        assert needle.lower() not in text.lower(), f"{needle!r} in a response"


async def test_an_erased_user_reads_as_gone_and_their_history_as_erased(
    api: tuple[httpx.AsyncClient, CommandHandlers],
) -> None:
    client, handlers = api
    victim = await full_life(handlers, "api")
    other = await full_life(handlers, "kept")
    before = datetime.now(UTC).isoformat()
    live = await client.get(f"/users/{victim.user_id}/history")
    assert live.status_code == 200
    assert live.json()["erased"] is False
    first = live.json()["events"][0]["data"]["email"]
    assert first == victim.needles[0].lower()  # the canonical form; the test can fail

    await handlers.handle(EraseUser(user_id=victim.user_id))

    gone = await client.get(f"/users/{victim.user_id}")
    assert gone.status_code == 404
    assert gone.json()["code"] == "USER_NOT_FOUND"
    past = await client.get(f"/users/{victim.user_id}", params={"as_of": before})
    assert past.status_code == 404, past.text
    assert past.json()["code"] == "USER_NOT_FOUND"
    assert "was erased" in past.json()["message"]
    listed = await client.get("/users", params={"email": victim.needles[1]})
    assert listed.status_code == 200
    assert listed.json()["items"] == []

    history = await client.get(f"/users/{victim.user_id}/history")
    assert history.status_code == 200, history.text
    body = history.json()
    assert body["erased"] is True
    assert body["version"] == 6
    assert [e["event_type"] for e in body["events"]] == [
        "UserRegistered",
        "UserEmailChanged",
        "UserPasswordChanged",
        "OAuthAccountLinked",
        "OAuthAccountUpdated",
        "UserErased",
    ]
    registered = body["events"][0]["data"]
    assert registered["email"] == registered["hashed_password"] == "[erased]"
    assert registered["profile"] == {"nickname": "[erased]", "plan": "gold"}
    linked = body["events"][3]["data"]
    for name in ("access_token", "refresh_token", "account_id", "account_email"):
        assert linked[name] == "[erased]"
    assert linked["oauth_name"] == "github"
    assert body["events"][4]["data"]["changes"] == {"access_token": "[erased]"}
    for response in (gone, past, listed, history):
        assert_absent(response.text, victim)

    # everyone else reads as before, now and in the past
    kept = await client.get(f"/users/{other.user_id}")
    assert kept.status_code == 200
    assert kept.json()["email"] == other.needles[1]
    kept_past = await client.get(f"/users/{other.user_id}", params={"as_of": before})
    assert kept_past.status_code == 200
    assert kept_past.json()["email"] == other.needles[1]
    kept_history = (await client.get(f"/users/{other.user_id}/history")).json()
    assert kept_history["erased"] is False
    assert kept_history["events"][0]["data"]["hashed_password"] == "[redacted]"


async def test_history_schema_documents_the_erased_flag(
    api: tuple[httpx.AsyncClient, CommandHandlers],
) -> None:
    client, _ = api
    spec = (await client.get("/openapi.json")).json()
    props = spec["components"]["schemas"]["HistoryOut"]["properties"]
    assert props["erased"]["type"] == "boolean"
    assert (await client.get(f"/users/{uuid.uuid4()}/history")).status_code == 404
