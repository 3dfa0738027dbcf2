"""Commands leave the broker once handled, on real NATS, RabbitMQ and Redis: no password or
OAuth token stays stored after its command ran (read from the stream or queue directly), and
what an older version declared (a limits-retention JetStream stream, RabbitMQ queues without
bounds) is migrated at start-up, never a crash."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import aio_pika
import nats
import pytest
from aiormq.exceptions import ChannelPreconditionFailed
from nats.js.api import ConsumerConfig, DiscardPolicy, RetentionPolicy, StreamConfig
from pamqp.common import FieldTable
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bootstrap import Container
from registry.bus import Channels
from registry.bus.retention import command_queue_arguments, dead_letter_queue_arguments
from tests.support.broker import held, secret_in
from tests.support.bus import (
    BROKER_URLS,
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
KINDS = ["nats", "rabbit", "redis"]
PASSWORD = "plaintext-password-on-the-wire"
TOKEN = "gho_plaintext_token_on_the_wire"


@pytest.fixture
async def setup(engine: AsyncEngine) -> AsyncIterator[tuple[Container, Channels]]:
    async with bus_setup(engine, "unused://", KINDS) as ready:
        yield ready


@pytest.mark.parametrize("kind", KINDS)
async def test_no_secret_stays_on_the_broker_once_handled(
    kind: str, setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    async with consumer(container, kind, ack_wait=15.0), BusClient(kind, channels) as client:
        user = await client.send("register", register_payload(password=PASSWORD))
        assert user.accepted, user
        uid = str(user.user_id)
        link = {
            "user_id": uid,
            "oauth_name": "github",
            "access_token": TOKEN,
            "account_id": "1",
            "account_email": "a@example.com",
        }
        assert (await client.send("link-oauth", link)).accepted
        assert (await client.send("update", {"user_id": uid, "password": PASSWORD + "2"})).accepted
        refused = await client.send("update", {"user_id": uid, "password": PASSWORD, "x": 1})
        assert refused.code == "INVALID_COMMAND"
        # fire-and-forget too: handled, then gone
        await client.publish("update", {"user_id": uid, "password": PASSWORD + "3"})

        async def handled() -> bool:
            return await event_count(engine) >= 4

        await eventually(handled, timeout=15, message="the published command handled")
        if kind != "rabbit":  # RabbitMQ: read the queue once the consumer is gone

            async def emptied() -> bool:
                return not (await held(kind, channels)).bodies

            await eventually(emptied, timeout=15, message="the stored commands removed")
    state = await held(kind, channels)
    assert secret_in(state.bodies, PASSWORD, TOKEN) == []
    assert (state.bodies, state.waiting) == ([], 0)


async def test_nats_commands_stream_is_a_bounded_work_queue(
    setup: tuple[Container, Channels],
) -> None:
    container, channels = setup
    async with consumer(container, "nats"):
        pass
    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        config = (await nc.jetstream().stream_info(channels.nats_command_stream)).config
    finally:
        await nc.close()
    assert config.retention == RetentionPolicy.WORK_QUEUE
    assert config.discard == DiscardPolicy.NEW  # full: new commands refused, none dropped
    assert config.max_bytes
    assert config.max_bytes > 0
    assert config.max_msg_size
    assert config.max_msg_size > 0
    assert config.max_age
    assert config.max_age > 0


async def test_a_limits_retention_stream_is_migrated_at_start_up(
    setup: tuple[Container, Channels], engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """As an older version declared it: limits retention, 24 h, no size bound; two commands
    handled (acknowledged, still stored), one not yet delivered."""

    container, channels = setup
    stream = channels.nats_command_stream
    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=stream, subjects=[channels.command_wildcard], max_age=86400)
        )
        sub = await js.pull_subscribe(
            channels.command_wildcard,
            durable=channels.durable,
            stream=stream,
            config=ConsumerConfig(ack_wait=2),
        )
        for i in range(3):
            body = json.dumps(register_payload(f"old{i}@example.com", password=PASSWORD))
            await js.publish(channels.command("register"), body.encode(), stream=stream)
        for msg in await sub.fetch(2, timeout=5):
            await msg.ack_sync()
        await sub.unsubscribe()
        assert (await js.stream_info(stream)).state.messages == 3
    finally:
        await nc.close()

    caplog.set_level(logging.INFO, logger="registry.bus")
    async with consumer(container, "nats", ack_wait=2.0), BusClient("nats", channels) as client:
        # the undelivered one was handled by the migration, then the stream serves as before
        assert await event_count(engine) == 1
        assert (await client.send("register", register_payload(password=PASSWORD))).accepted
    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    assert info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.config.subjects == [channels.command_wildcard]
    state = await held("nats", channels)
    assert (state.bodies, state.waiting) == ([], 0)
    assert any("migrated" in r.getMessage() for r in caplog.records)
    assert await event_count(engine) == 2


async def _declare_old_rabbit_queues(channels: Channels, message: bytes | None) -> None:
    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        channel = await conn.channel()
        args: FieldTable = {"x-dead-letter-exchange": channels.dead_letter_exchange}
        queue = await channel.declare_queue(channels.queue, durable=True, arguments=args)
        await channel.declare_queue(channels.dead_letter_queue, durable=True)
        exchange = await channel.declare_exchange(
            channels.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await queue.bind(exchange, routing_key=channels.command_wildcard)
        if message is not None:
            await exchange.publish(
                aio_pika.Message(message, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=channels.command("register"),
            )
    finally:
        await conn.close()


async def _has_new_arguments(channels: Channels) -> bool:
    """Whether declaring the queues with the bounded arguments is accepted (RabbitMQ refuses
    a declaration whose arguments differ from the queue's)."""

    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        for name, args in (
            (channels.queue, command_queue_arguments(channels.dead_letter_exchange)),
            (channels.dead_letter_queue, dead_letter_queue_arguments()),
        ):
            try:
                async with conn.channel() as channel:
                    await channel.declare_queue(name, durable=True, arguments=args)
            except ChannelPreconditionFailed:
                return False
        return True
    finally:
        await conn.close()


async def test_rabbit_queues_of_an_older_version_are_kept_then_migrated(
    setup: tuple[Container, Channels], engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    container, channels = setup
    waiting = json.dumps(register_payload(password=PASSWORD)).encode()
    await _declare_old_rabbit_queues(channels, waiting)
    caplog.set_level(logging.WARNING, logger="registry.bus")
    # holding a command: kept as it is (a warning), and the command is served
    async with consumer(container, "rabbit"):

        async def served() -> bool:
            return await event_count(engine) == 1

        await eventually(served, timeout=15, message="the waiting command handled")
    assert any("kept as it is" in r.getMessage() for r in caplog.records)
    assert not await _has_new_arguments(channels)
    # empty at the next start: declared again with the bounds
    async with consumer(container, "rabbit"), BusClient("rabbit", channels) as client:
        assert (await client.send("register", register_payload())).accepted
    assert await _has_new_arguments(channels)


async def test_redis_commands_older_than_the_maximum_age_are_trimmed(
    setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    """An entry from before the consumer group existed is never delivered to it: without the
    age bound it would keep its password for ever."""

    container, channels = setup
    stream = channels.command("register")
    client = Redis.from_url(BROKER_URLS["redis"])
    try:
        old = json.dumps(register_payload(password=PASSWORD)).encode()
        await client.xadd(stream, {"__data__": old}, id="1000-0")  # 1970: long expired
        async with consumer(container, "redis"), BusClient("redis", channels) as bus:
            assert (await bus.send("register", register_payload())).accepted

            async def trimmed() -> bool:
                return not secret_in((await held("redis", channels)).bodies, PASSWORD)

            await eventually(trimmed, timeout=15, message="the expired command trimmed")
    finally:
        await client.aclose()
    assert await event_count(engine) == 1
