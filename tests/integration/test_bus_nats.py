"""The NATS command path on a real server (`registry.bus.nats_commands`): the consumer loop runs
at most `max_workers` commands at once and lets running ones finish when stopped; the client
multiplexes replies over one subscription; and both ends keep FastStream's wire format, so a
plain FastStream `request` still gets the typed reply."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bootstrap import Container
from registry.bus import Channels, ReplyTimeoutError, command_handlers, create_broker, running_bus
from registry.bus.nats_commands import NatsRequester
from registry.domain.commands import Command
from registry.service.handlers import Outcome
from tests.support.bus import (
    BROKER_URLS,
    TIMEOUT,
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
    async with bus_setup(engine, BROKER_URLS["nats"], ["nats"]) as ready:
        yield ready


async def test_concurrent_requests_on_one_connection_get_their_own_replies(
    setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    ids = [f"mux-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    async with consumer(container, "nats"), BusClient("nats", channels) as client:
        replies = await asyncio.gather(
            *(client.send("register", register_payload(command_id=i)) for i in ids)
        )
        requester = NatsRequester.for_broker(client.broker)
        assert requester is NatsRequester.for_broker(client.broker)  # one per connection
        # every waiter answered and forgotten: the leak under test is in private state
        assert requester._waiting == {}  # noqa: SLF001
    assert [r.command_id for r in replies] == ids
    assert all(r.accepted and not r.duplicate for r in replies)
    assert len({r.user_id for r in replies}) == len(ids)
    assert await event_count(engine) == len(ids)


async def test_a_faststream_request_gets_the_same_typed_reply(
    setup: tuple[Container, Channels],
) -> None:
    container, channels = setup
    broker = create_broker(BROKER_URLS["nats"])
    async with consumer(container, "nats"):
        await broker.connect()
        try:
            msg = await broker.request(
                json.dumps(register_payload(command_id="fs-1")).encode(),
                channels.command("register"),
                stream=channels.nats_command_stream,
                timeout=TIMEOUT,
                correlation_id="corr-1",
            )
            body = await msg.decode()
        finally:
            await broker.stop()
    # the headers a FastStream subscriber answers with
    assert (msg.content_type, msg.correlation_id) == ("application/json", "corr-1")
    assert (body["status"], body["command_id"], body["version"]) == ("accepted", "fs-1", 1)


async def test_no_consumer_times_out_and_leaves_no_waiter(
    setup: tuple[Container, Channels],
) -> None:
    container, channels = setup
    async with consumer(container, "nats"):
        pass  # declares the stream, then nobody consumes
    async with BusClient("nats", channels) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReplyTimeoutError):
            await client.send("register", register_payload(), timeout=0.5)
        assert loop.time() - started < 3
        assert NatsRequester.for_broker(client.broker)._waiting == {}  # noqa: SLF001


async def test_at_most_max_workers_commands_run_at_once(
    setup: tuple[Container, Channels],
) -> None:
    container, channels = setup
    real = command_handlers(container).handle
    running = peak = 0

    async def handle(command: Command) -> Outcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.05)
            return await real(command)
        finally:
            running -= 1

    async with (
        running_bus(
            container,
            broker=create_broker(BROKER_URLS["nats"]),
            handle=handle,
            channels=channels,
            relay=False,
            max_workers=3,
        ),
        BusClient("nats", channels) as client,
    ):
        replies = await asyncio.gather(
            *(client.send("register", register_payload()) for _ in range(12))
        )
    assert all(r.accepted for r in replies)
    assert peak == 3


async def test_stopping_lets_running_commands_reply_and_ack(
    setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    container, channels = setup
    real = command_handlers(container).handle
    entered = asyncio.Event()

    async def slow(command: Command) -> Outcome:
        entered.set()
        await asyncio.sleep(0.5)
        return await real(command)

    async with BusClient("nats", channels) as client:
        async with running_bus(
            container,
            broker=create_broker(BROKER_URLS["nats"]),
            handle=slow,
            channels=channels,
            relay=False,
        ):
            waiting = asyncio.create_task(client.send("register", register_payload()))
            await entered.wait()
        # the block exited (the consumer stopped) while the command was running
        reply = await asyncio.wait_for(waiting, 5)
    assert reply.accepted, reply
    assert await event_count(engine) == 1

    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        js = nc.jetstream()

        async def acknowledged() -> bool:
            info = await js.consumer_info(channels.nats_command_stream, channels.durable)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(acknowledged, timeout=15, message="the command acknowledged")
    finally:
        await nc.close()
