"""An idempotency key reused for another command, over real NATS, RabbitMQ and Redis (and
from `registry send`, in test_bus_cli.py): rejected with IDEMPOTENCY_KEY_REUSED, nothing done.
Issue 15, item 3: an `erase` of B with the command_id of an earlier `update` of A was answered
as that update's duplicate, exit 0, and B was not erased."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bus import Channels
from tests.support.bus import (
    BROKERS,
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
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=BROKERS)
async def client(request: pytest.FixtureRequest, engine: AsyncEngine) -> AsyncIterator[BusClient]:
    kind = request.param
    await create_tables(engine)
    prefix = unique_prefix()
    channels = Channels(prefix)
    container = make_container(engine, "unused://", prefix)
    try:
        async with consumer(container, kind), BusClient(kind, channels) as sender:
            yield sender
    finally:
        await cleanup(kind, channels)


@sqlite_only
async def test_a_reused_key_is_rejected_over_the_bus(
    client: BusClient, engine: AsyncEngine
) -> None:
    a = await client.send("register", register_payload())
    b_payload = register_payload()
    b = await client.send("register", b_payload)
    key = f"reuse-{uuid.uuid4()}"
    update = {"user_id": str(a.user_id), "is_verified": True, "command_id": key}
    assert (await client.send("update", update)).accepted
    before = await event_count(engine)
    reply = await client.send("erase", {"user_id": str(b.user_id), "command_id": key})
    assert (reply.status, reply.code, reply.command_id) == (
        "rejected",
        "IDEMPOTENCY_KEY_REUSED",
        key,
    )
    assert reply.user_id is None
    assert not reply.duplicate
    assert await event_count(engine) == before
    # B is not erased: its address is still taken
    taken = await client.send("register", register_payload(b_payload["email"]))
    assert taken.code == "EMAIL_ALREADY_REGISTERED"
    again = await client.send("update", update)
    assert again.accepted
    assert again.duplicate
    assert again.version == 2
