"""One effect per published message on real NATS, RabbitMQ and Redis, also without a
command_id: a command whose reply cannot be sent is acknowledged all the same (never
redelivered and run again), and a message redelivered after its command committed (the
consumer died, or lost its connection, before acknowledging) returns the first outcome, by
the message's identity on the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.tables import events as events_table
from registry.bootstrap import Container
from registry.bus import Channels, command_handlers, create_broker, running_bus
from registry.domain.commands import Command
from registry.service.handlers import Outcome
from tests.support.broker import close_connection, held, publish_with_reply
from tests.support.bus import (
    BROKER_URLS,
    Broker,
    BusClient,
    bus_setup,
    consumer,
    register_payload,
)
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.broker,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
KINDS = ["nats", "rabbit", "redis"]
#: a reply address no reply can be sent to: not a NATS subject, no such RabbitMQ queue
UNUSABLE = {"nats": "not a subject", "rabbit": "no-such-reply-queue", "redis": "nobody.listens"}


@pytest.fixture
async def setup(engine: AsyncEngine) -> AsyncIterator[tuple[Container, Channels]]:
    async with bus_setup(engine, "unused://", KINDS) as ready:
        yield ready


async def password_changes(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(events_table.c.event_type == "UserPasswordChanged")
        return int(await conn.scalar(query) or 0)


async def _settled(kind: str, channels: Channels) -> bool:
    state = await held(kind, channels)
    return state.waiting == 0 and not state.bodies


@pytest.mark.parametrize("kind", KINDS)
async def test_unusable_reply_address_one_effect_and_acknowledged(
    kind: str,
    setup: tuple[Container, Channels],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    container, channels = setup
    caplog.set_level(logging.INFO, logger="registry.bus")
    secrets = ["first new password", "second new password"]
    # an ack wait well above the time hashing a password takes on a busy machine: any
    # redelivery seen here is one the consumer caused
    async with consumer(container, kind, ack_wait=15.0), BusClient(kind, channels) as client:
        user = await client.send("register", register_payload())
        assert user.accepted, user
        for secret in secrets:
            body = json.dumps({"user_id": str(user.user_id), "password": secret}).encode()
            await publish_with_reply(client, "update", body, UNUSABLE[kind])

        async def both_applied() -> bool:
            return await password_changes(engine) >= 2

        await eventually(both_applied, timeout=15, message="both password changes")
        if kind != "rabbit":  # RabbitMQ: read the queue once the consumer is gone
            await eventually(
                lambda: _settled(kind, channels), timeout=15, message="both acknowledged"
            )
        # a later command is served: nothing is stuck behind them
        again = await client.send("update", {"user_id": str(user.user_id), "is_verified": True})
        assert again.accepted, again
    if kind == "rabbit":
        assert await _settled(kind, channels)
    else:
        assert (await held(kind, channels)).redelivered == 0
    assert await password_changes(engine) == 2
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert not any(s in text for s in secrets)
    if kind == "nats":  # the one broker here where publishing to that address fails
        failed = [r for r in caplog.records if r.getMessage() == "reply not sent"]
        assert len(failed) == 2
        assert all(r.levelno == logging.WARNING for r in failed)


@contextlib.asynccontextmanager
async def _stalling_consumer(
    container: Container, kind: str, channels: Channels
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Event, Broker]]:
    """A consumer whose first command commits and then stalls before its reply and its
    acknowledgement: (committed, release, broker)."""
    real = command_handlers(container).handle
    committed, release = asyncio.Event(), asyncio.Event()

    async def handle(command: Command) -> Outcome:
        outcome = await real(command)
        if not committed.is_set():
            committed.set()
            await release.wait()
        return outcome

    broker = create_broker(BROKER_URLS[kind])
    bus = running_bus(
        container, broker=broker, handle=handle, channels=channels, relay=False, ack_wait=1.0
    )
    await bus.__aenter__()
    try:
        yield committed, release, broker
    finally:
        release.set()
        with contextlib.suppress(Exception):
            await bus.__aexit__(None, None, None)


@pytest.mark.parametrize("kind", KINDS)
async def test_redelivery_after_the_commit_has_one_effect_without_command_id(
    kind: str, setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    async with BusClient(kind, channels) as client:
        async with consumer(container, kind, ack_wait=1.0):
            user = await client.send("register", register_payload())
        async with _stalling_consumer(container, kind, channels) as (committed, _, broker):
            # a new password is hashed afresh (new salt) each time it runs: a second run
            # would append a second UserPasswordChanged
            change = {"user_id": str(user.user_id), "password": "a new password"}
            await client.publish("update", change)
            await asyncio.wait_for(committed.wait(), 15)
            if kind == "rabbit":
                # RabbitMQ redelivers only what a closed channel left unacknowledged
                await close_connection(broker)
            # NATS redelivers after the ack wait, Redis's consumer group lets another
            # consumer claim it once idle that long: the first delivery still stalls
            async with consumer(container, kind, ack_wait=1.0):

                async def acknowledged() -> bool:
                    return (await held(kind, channels)).waiting == 0

                await eventually(acknowledged, timeout=15, message="the redelivery acknowledged")
    assert await password_changes(engine) == 1


async def test_a_payload_cannot_take_an_id_in_the_broker_namespace(
    setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    async with consumer(container, "nats"), BusClient("nats", channels) as client:
        reply = await client.send("register", register_payload(command_id="bus:nats:X:1:1"))
    assert (reply.status, reply.code) == ("rejected", "INVALID_COMMAND"), reply
    assert "reserved" in (reply.message or "")
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(events_table)) == 0
