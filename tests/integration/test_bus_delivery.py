"""Delivery guarantees on real brokers: poison messages without a reply address are
dead-lettered (RabbitMQ), terminated (NATS) or dropped (Redis) with one log line; a message
redelivered after a consumer died before acking has one effect and the first outcome; and a
consumer stopped while commands keep coming applies every one exactly once in effect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aio_pika
import nats
import pytest
from faststream.redis.parser.binary import BinaryMessageFormatV1
from nats.js.api import ConsumerInfo
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.tables import events as events_table
from registry.bootstrap import Container
from registry.bus import Channels, command_handlers, create_broker, process, running_bus
from registry.domain.commands import Command, RegisterUser
from registry.service.handlers import Outcome
from tests.support.broker import StreamEntry
from tests.support.bus import (
    BROKER_URLS,
    FAKE_HASH,
    MAX_PAYLOAD,
    BusClient,
    bus_setup,
    consumer,
    event_count,
    register_payload,
)
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.broker,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture
async def setup(engine: AsyncEngine) -> AsyncIterator[tuple[Container, Channels]]:
    async with bus_setup(engine, "unused://", list(BROKER_URLS)) as ready:
        yield ready


# ---------------------------------------------------------------------------- poison


async def _dead_letter_bodies(channels: Channels) -> list[bytes]:
    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        channel = await conn.channel()
        queue = await channel.get_queue(channels.dead_letter_queue, ensure=True)
        bodies = []
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            bodies.append(msg.body)
        return bodies
    finally:
        await conn.close()


async def _nats_consumer_info(channels: Channels) -> ConsumerInfo:
    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(
            channels.nats_command_stream, channels.durable
        )
        return info
    finally:
        await nc.close()


@pytest.mark.parametrize("kind", ["nats", "rabbit", "redis"])
async def test_poison_without_reply_address_is_dead_lettered_or_dropped_once(
    kind: str,
    setup: tuple[Container, Channels],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    container, channels = setup
    poison = [
        ("register", b"{not json"),
        ("update", b'{"user_id": "x", "is_active": "perhaps"}'),
        ("delete", b'{"user_id": "' + b"9" * (MAX_PAYLOAD + 10) + b'"}'),
    ]
    caplog.set_level(logging.WARNING, logger="registry.bus")
    async with consumer(container, kind, ack_wait=1.0), BusClient(kind, channels) as client:
        for name, body in poison:
            await client.publish(name, body)
        # served afterwards, in order behind the poison on each channel
        ok = await client.send("register", register_payload())
        assert ok.accepted, ok

        def poison_lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage().startswith("poison message")]

        async def all_logged() -> bool:
            return len(poison_lines()) >= len(poison)

        await eventually(all_logged, timeout=15, message="one log line per poison message")
        if kind == "rabbit":

            async def dead_lettered() -> bool:
                dead.extend(await _dead_letter_bodies(channels))
                return len(dead) >= len(poison)

            dead: list[bytes] = []
            await eventually(dead_lettered, timeout=15, message="poison in the dead-letter queue")
            assert sorted(dead) == sorted(body for _, body in poison)
        if kind == "nats":
            # terminated: nothing waits for an ack, nothing is redelivered after ack_wait
            async def settled() -> bool:
                info = await _nats_consumer_info(channels)
                return bool(info.num_ack_pending == 0 and info.num_pending == 0)

            await eventually(settled, timeout=15, message="poison terminated")
            info = await _nats_consumer_info(channels)
            assert info.num_redelivered == 0
        # still serving, and the poison appended nothing
        again = await client.send("register", register_payload())
        assert again.accepted, again
    lines = poison_lines()
    assert len(lines) == len(poison)  # one clear line each, no crash loop
    assert not [r for r in caplog.records if r.getMessage() == "command rejected"]
    expected = {"nats": "terminated", "rabbit": "dead-lettered", "redis": "dropped"}[kind]
    assert all(expected in r.getMessage() for r in lines)
    assert {getattr(r, "code", None) for r in lines} == {"INVALID_COMMAND", "PAYLOAD_TOO_LARGE"}
    assert await event_count(engine) == 2
    assert all("perhaps" not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- redelivery


@contextlib.asynccontextmanager
async def _nats_take_one(channels: Channels) -> AsyncIterator[Any]:
    """Fetch one command as the durable consumer would, then vanish without acking."""

    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        sub = await nc.jetstream().pull_subscribe_bind(
            durable=channels.durable, stream=channels.nats_command_stream
        )
        (msg,) = await sub.fetch(1, timeout=10)
        yield msg
    finally:
        await nc.close()  # the connection dies: no ack was ever sent


@contextlib.asynccontextmanager
async def _rabbit_take_one(channels: Channels) -> AsyncIterator[Any]:
    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        channel = await conn.channel()
        queue = await channel.get_queue(channels.queue, ensure=True)
        msg = await eventually(
            lambda: queue.get(no_ack=False, fail=False),
            timeout=10,
            message="the command to reach the queue",
        )
        yield msg
    finally:
        await conn.close()  # unacked: RabbitMQ requeues it


@contextlib.asynccontextmanager
async def _redis_take_one(channels: Channels) -> AsyncIterator[Any]:
    """Read one entry as another member of the consumer group, and never acknowledge it."""

    client = Redis.from_url(BROKER_URLS["redis"])
    try:

        async def read_one() -> list[tuple[bytes, list[StreamEntry]]]:
            return cast(
                "list[tuple[bytes, list[StreamEntry]]]",
                await client.xreadgroup(
                    channels.durable, "dead-consumer", {channels.command("register"): ">"}, count=1
                ),
            )

        entries = await eventually(read_one, timeout=10, message="the command to reach the stream")
        (_, [(_, fields)]) = entries[0]
        body, _headers = BinaryMessageFormatV1.parse(fields[b"__data__"])

        class Taken:
            data = body

        yield Taken()
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["nats", "rabbit", "redis"])
async def test_redelivery_after_a_consumer_died_before_acking(
    kind: str, setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    async with consumer(container, kind, ack_wait=1.0):
        pass  # declares the stream/queue and the durable consumer, then goes away
    payload = register_payload(command_id=f"redeliver-{uuid.uuid4()}")
    async with BusClient(kind, channels) as client:
        waiting = asyncio.create_task(client.send("register", payload, timeout=30))
        take = {"nats": _nats_take_one, "rabbit": _rabbit_take_one, "redis": _redis_take_one}
        async with take[kind](channels) as msg:
            body = msg.body if kind == "rabbit" else msg.data
            first = await process(
                body, "register", command_handlers(container).handle, max_bytes=MAX_PAYLOAD
            )
            assert first.accepted, first
            assert not first.duplicate, first
            assert await event_count(engine) == 1
        # the dead consumer's effect is committed but its message was never acknowledged
        async with consumer(container, kind, ack_wait=1.0):
            reply = await waiting
    assert reply.accepted, reply
    assert (reply.user_id, reply.version, reply.duplicate) == (first.user_id, 1, True)
    assert await event_count(engine) == 1


# ---------------------------------------------------------------------------- restart


async def _drained(kind: str, channels: Channels) -> bool:
    if kind == "nats":
        info = await _nats_consumer_info(channels)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(channels.queue, passive=True)
        return queue.declaration_result.message_count == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("kind", ["nats", "rabbit"])
async def test_stop_and_restart_while_commands_keep_coming(
    kind: str, setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    total = 60
    payloads = [register_payload(command_id=f"r-{i}") for i in range(total)]
    published = 0

    async def publish_all(client: BusClient) -> None:
        nonlocal published
        for i, p in enumerate(payloads):
            await client.publish("register", p)
            if i % 4 == 0:
                await client.publish("register", payloads[i // 2])  # a duplicate, later
            published = i + 1
            await asyncio.sleep(0.01)  # a steady stream of senders, not a burst

    async with BusClient(kind, channels) as client:
        async with consumer(container, kind, ack_wait=1.0):
            sender = asyncio.create_task(publish_all(client))

            async def some_applied() -> bool:
                return published >= 15 and await event_count(engine) >= 5

            await eventually(some_applied, timeout=15, message="the first commands applied")
        stopped_at = await event_count(engine)

        async def more_published() -> bool:
            return published >= 40

        await eventually(more_published, timeout=15, message="commands published while stopped")
        assert await event_count(engine) == stopped_at  # nobody consumes while stopped
        async with consumer(container, kind, ack_wait=1.0):
            await sender

            async def all_applied() -> bool:
                return await event_count(engine) >= total and await _drained(kind, channels)

            await eventually(all_applied, timeout=30, message="every command applied")
    assert await event_count(engine) == total
    async with engine.connect() as conn:
        streams = await conn.scalar(select(func.count(func.distinct(events_table.c.stream_id))))
        top = await conn.scalar(select(func.max(events_table.c.stream_version)))
    assert (streams, top) == (total, 1)


# ---------------------------------------------------------------------------- failures


async def test_an_unexpected_failure_replies_internal_error_without_secrets(
    setup: tuple[Container, Channels], engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    container, channels = setup
    real = command_handlers(container).handle

    async def handle(command: Command) -> Outcome:
        if isinstance(command, RegisterUser) and command.email.startswith("boom"):
            raise RuntimeError(f"database on fire, hash={command.hashed_password}")
        return await real(command)

    caplog.set_level(logging.INFO, logger="registry.bus")

    async with (
        running_bus(
            container,
            broker=create_broker(BROKER_URLS["nats"]),
            handle=handle,
            channels=channels,
            relay=False,
        ),
        BusClient("nats", channels) as client,
    ):
        failed = await client.send("register", register_payload("boom@example.com"))
        assert (failed.status, failed.code) == ("rejected", "INTERNAL_ERROR")
        assert "fire" not in (failed.message or "")
        ok = await client.send("register", register_payload())
        assert ok.accepted
    assert await event_count(engine) == 1
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert FAKE_HASH not in text
    assert "fire" not in text
    assert any(getattr(r, "error", None) == "RuntimeError" for r in caplog.records)
