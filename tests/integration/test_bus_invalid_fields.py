"""Bad input over the bus is the sender's fault, on real NATS, RabbitMQ and Redis with
PostgreSQL (which refuses NUL in text, so such values used to fail in the driver and come
back as INTERNAL_ERROR "retry with the same command_id", which could never succeed): each
one is INVALID_COMMAND naming the field, nothing is appended, the consumer keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bus import Channels
from tests.support.bus import (
    BROKERS,
    FAKE_HASH,
    BusClient,
    cleanup,
    consumer,
    create_tables,
    event_count,
    make_container,
    register_payload,
    unique_prefix,
)

pytestmark = [pytest.mark.broker]


@pytest.fixture(params=BROKERS)
async def bus(request: pytest.FixtureRequest, engine: AsyncEngine) -> AsyncIterator[BusClient]:
    kind = request.param
    await create_tables(engine)
    channels = Channels(unique_prefix())
    container = make_container(engine, "unused://", channels.prefix)
    try:
        async with consumer(container, kind), BusClient(kind, channels) as client:
            yield client
    finally:
        await cleanup(kind, channels)


def link(user_id: str, **extra: object) -> dict[str, object]:
    return {
        "user_id": user_id,
        "oauth_name": "github",
        "access_token": "gho_x",
        "account_id": f"gh-{uuid.uuid4().hex[:6]}",
        "account_email": "a@example.com",
        **extra,
    }


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_bad_values_are_invalid_command_not_internal_error(
    bus: BusClient, engine: AsyncEngine
) -> None:
    first = await bus.send("register", register_payload())
    assert first.accepted, first
    uid = str(first.user_id)
    before = await event_count(engine)
    surrogate = json.dumps({**register_payload(), "actor": "\ud800"}).encode()
    cases: list[tuple[str, Any, str]] = [
        ("register", register_payload("nul\x00@example.com"), "email"),
        ("register", register_payload(command_id="cmd\x00id"), "command_id"),
        ("register", register_payload(actor="ops\x00"), "actor"),
        ("register", surrogate, "actor"),
        ("register", register_payload("İ" * 200 + "@example.com"), "email"),  # 412 once lower
        ("register", register_payload("p\u0430ypal@example.com"), "email"),
        ("register", register_payload(profile={"first_name": "A\x00"}), "profile"),
        ("register", register_payload(is_active="yes"), "is_active"),
        ("update", {"user_id": uid, "is_verified": 1}, "is_verified"),
        ("update", {"user_id": uid, "email": "zero\u200bwidth@example.com"}, "email"),
        ("update", {"user_id": uid, "expected_version": "1", "is_active": False}, "expected"),
        ("link-oauth", link(uid, oauth_name="git\x00hub"), "oauth_name"),
        ("link-oauth", link(uid, account_id="1\x002"), "account_id"),
        ("link-oauth", link(uid, expires_at=2**40), "expires_at"),  # past the int32 column
    ]
    for name, payload, field in cases:
        reply = await bus.send(name, payload)
        assert (reply.status, reply.code) == ("rejected", "INVALID_COMMAND"), (field, reply)
        assert field in (reply.message or ""), (field, reply)
        assert FAKE_HASH not in reply.model_dump_json()
    assert await event_count(engine) == before

    after = await bus.send("link-oauth", link(uid, expires_at=2**31 - 1))
    assert after.accepted, after  # still serving, and the edge of the column is fine
