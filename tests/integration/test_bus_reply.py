"""Request/reply over real NATS (JetStream), RabbitMQ and Redis (Streams): every command
accepted, every rejection code, bad input refused whole while the consumer keeps serving, and
one command id sent ten times having one effect."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bus import Channels, Reply
from tests.support.bus import (
    BROKERS,
    FAKE_HASH,
    MAX_PAYLOAD,
    BusClient,
    Payload,
    cleanup,
    consumer,
    create_tables,
    event_count,
    make_container,
    register_payload,
    unique_prefix,
)

pytestmark = [pytest.mark.broker]


class Bus:
    def __init__(self, client: BusClient, engine: AsyncEngine) -> None:
        self.client = client
        self.engine = engine

    async def send(self, name: str, payload: Payload) -> Reply:
        return await self.client.send(name, payload)

    async def events(self) -> int:
        return await event_count(self.engine)


@pytest.fixture(params=BROKERS)
async def bus(request: pytest.FixtureRequest, engine: AsyncEngine) -> AsyncIterator[Bus]:
    kind = request.param
    await create_tables(engine)
    prefix = unique_prefix()
    channels = Channels(prefix)
    container = make_container(engine, "unused://", prefix)
    try:
        async with consumer(container, kind), BusClient(kind, channels) as client:
            yield Bus(client, engine)
    finally:
        await cleanup(kind, channels)


sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_every_command_is_accepted_with_user_id_and_version(bus: Bus) -> None:
    payload = register_payload(password="correct horse battery staple", command_id="c-reg")
    reg = await bus.send("register", payload)
    assert reg.status == "accepted", reg
    assert reg.command_id == "c-reg"
    assert reg.version == 1
    assert reg.user_id is not None
    uid = str(reg.user_id)

    upd = await bus.send("update", {"user_id": uid, "is_verified": True, "expected_version": 1})
    assert (upd.status, upd.user_id, upd.version) == ("accepted", reg.user_id, 2), upd

    link = await bus.send(
        "link-oauth",
        {
            "user_id": uid,
            "oauth_account_id": str(uuid.uuid4()),
            "oauth_name": "github",
            "access_token": "gho_secret",
            "account_id": "42",
            "account_email": "a@example.com",
        },
    )
    assert (link.status, link.version) == ("accepted", 3), link

    oauth_id = str(uuid.uuid4())
    await bus.send(
        "link-oauth",
        {
            "user_id": uid,
            "oauth_account_id": oauth_id,
            "oauth_name": "google",
            "access_token": "ya29",
            "account_id": "g-1",
            "account_email": "a@example.com",
        },
    )
    up_oauth = await bus.send(
        "update-oauth", {"user_id": uid, "oauth_account_id": oauth_id, "access_token": "ya30"}
    )
    assert (up_oauth.status, up_oauth.version) == ("accepted", 5), up_oauth

    gone = await bus.send("delete", {"user_id": uid})
    assert (gone.status, gone.version) == ("accepted", 6), gone
    assert await bus.events() == 6
    assert "gho_secret" not in link.model_dump_json()
    assert "correct horse" not in reg.model_dump_json()


@sqlite_only
async def test_every_rejection_code_appends_nothing(bus: Bus) -> None:
    first = await bus.send("register", register_payload("Taken@Example.com"))
    assert first.accepted, first
    uid = str(first.user_id)
    oauth = {
        "user_id": uid,
        "oauth_account_id": str(uuid.uuid4()),
        "oauth_name": "github",
        "access_token": "t",
        "account_id": "1",
        "account_email": "x@example.com",
    }
    assert (await bus.send("link-oauth", oauth)).accepted
    before = await bus.events()

    cases: list[tuple[str, Any, str]] = [
        ("register", register_payload("  taken@EXAMPLE.com "), "EMAIL_ALREADY_REGISTERED"),
        ("register", register_payload(user_id=uid), "USER_ALREADY_EXISTS"),
        ("update", {"user_id": str(uuid.uuid4()), "is_active": False}, "USER_NOT_FOUND"),
        ("update", {"user_id": uid, "is_active": False, "expected_version": 7}, "VERSION_CONFLICT"),
        (
            "update-oauth",
            {"user_id": uid, "oauth_account_id": str(uuid.uuid4()), "access_token": "x"},
            "OAUTH_ACCOUNT_NOT_FOUND",
        ),
        (
            "link-oauth",
            {**oauth, "oauth_account_id": str(uuid.uuid4())},
            "OAUTH_ACCOUNT_ALREADY_LINKED",
        ),
        ("update", {"user_id": "not-a-uuid", "is_active": "maybe"}, "INVALID_COMMAND"),
        ("register", {**register_payload(), "role": "admin"}, "INVALID_COMMAND"),
        ("register", b'{"email": "a@b.c", "password": ', "INVALID_COMMAND"),
        ("delete", b"[1, 2, 3]", "INVALID_COMMAND"),
        ("delete", b"\xff\xfe not utf-8", "INVALID_COMMAND"),
        ("register", register_payload(profile={"x": "y" * MAX_PAYLOAD}), "PAYLOAD_TOO_LARGE"),
    ]
    for name, payload, code in cases:
        reply = await bus.send(name, payload)
        assert reply.status == "rejected", (code, reply)
        assert reply.code == code, (code, reply)
        assert reply.message
        assert FAKE_HASH not in reply.model_dump_json()
    assert await bus.events() == before

    # the consumer is still serving
    after = await bus.send("register", register_payload())
    assert after.accepted, after
    assert await bus.events() == before + 1


@sqlite_only
async def test_rejected_reply_carries_the_command_id(bus: Bus) -> None:
    reply = await bus.send("update", {"user_id": "nope", "command_id": "abc-1"})
    assert (reply.code, reply.command_id) == ("INVALID_COMMAND", "abc-1")
    assert "user_id" in (reply.message or "")


@sqlite_only
async def test_same_command_id_ten_times_has_one_effect(bus: Bus) -> None:
    payload = register_payload(command_id=f"once-{uuid.uuid4()}")
    replies = await asyncio.gather(*(bus.send("register", payload) for _ in range(10)))
    assert all(r.accepted for r in replies), replies
    assert {(r.user_id, r.version) for r in replies} == {(replies[0].user_id, 1)}
    assert sum(not r.duplicate for r in replies) == 1
    assert await bus.events() == 1
    # and later, sequentially: still the first outcome
    again = await bus.send("register", payload)
    assert (again.user_id, again.version, again.duplicate) == (replies[0].user_id, 1, True)
    assert await bus.events() == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("bus", ["nats"], indirect=True)
async def test_on_postgresql_concurrent_commands_and_duplicates(bus: Bus) -> None:
    payloads = [register_payload(command_id=f"pg-{i}") for i in range(20)]
    replies = await asyncio.gather(*(bus.send("register", p) for p in payloads + payloads))
    assert all(r.accepted for r in replies), [r for r in replies if not r.accepted]
    assert len({r.user_id for r in replies}) == 20
    assert await bus.events() == 20
    taken = await bus.send("register", register_payload(payloads[0]["email"].upper()))
    assert taken.code == "EMAIL_ALREADY_REGISTERED"


@sqlite_only
@pytest.mark.parametrize("bus", ["nats", "rabbit"], indirect=True)
async def test_unknown_command_channel_is_rejected(bus: Bus) -> None:
    # one subscription covers <prefix>.users.* on NATS and RabbitMQ, so a misspelt channel
    # still gets an answer (Redis streams have no wildcard: nobody reads an unknown stream)
    reply = await bus.send("rename", {"user_id": str(uuid.uuid4())})
    assert (reply.status, reply.code) == ("rejected", "UNKNOWN_COMMAND")
    assert "register" in (reply.message or "")
    assert json.loads(reply.model_dump_json())["command"] == "rename"
    assert await bus.events() == 0
