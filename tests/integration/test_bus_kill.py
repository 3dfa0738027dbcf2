"""`registry consume` killed with SIGKILL while commands keep arriving, then started again:
every command is applied exactly once in effect (NATS JetStream redelivers after the ack wait,
RabbitMQ requeues on the dropped connection; command ids deduplicate what was committed but
not acknowledged)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.tables import events as events_table
from registry.bus import Channels
from tests.support.bus import (
    BROKER_URLS,
    BusClient,
    cleanup,
    create_tables,
    event_count,
    register_payload,
    unique_prefix,
)
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.broker,
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
REGISTRY = str(Path(sys.executable).with_name("registry"))


async def subscribed(kind: str, channels: Channels) -> bool:
    """The consumer process is attached to the durable stream consumer / queue."""
    try:
        if kind == "nats":
            nc = await nats.connect(BROKER_URLS["nats"])
            try:
                info = await nc.jetstream().consumer_info(
                    channels.nats_command_stream, channels.durable
                )
                return bool(info.num_waiting)  # a pull request is outstanding
            finally:
                await nc.close()

        conn = await aio_pika.connect(BROKER_URLS["rabbit"])
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(channels.queue, passive=True)
            return bool(queue.declaration_result.consumer_count)
        finally:
            await conn.close()
    # not subscribed yet, in whatever way the broker says so
    except Exception:  # noqa: BLE001
        return False


class Consumer:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            REGISTRY,
            "consume",
            "--no-relay",
            env={**os.environ, **self.env},
            stdout=out,
            stderr=out,
        )
        out.close()

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 20)


@pytest.fixture(params=["nats", "rabbit"])
async def killable(
    request: pytest.FixtureRequest, engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[tuple[str, Channels, Consumer]]:
    kind = request.param
    await create_tables(engine)
    channels = Channels(unique_prefix())
    env = {
        "REGISTRY_BROKER_URL": BROKER_URLS[kind],
        "REGISTRY_BUS_PREFIX": channels.prefix,
        "REGISTRY_DATABASE_URL": engine.url.render_as_string(False),
        "REGISTRY_BUS_ACK_WAIT": "2",
    }
    runner = Consumer(env, tmp_path / "consume.log")
    try:
        yield kind, channels, runner
    finally:
        if runner.proc is not None and runner.proc.returncode is None:
            runner.proc.kill()
            await runner.proc.wait()
        await cleanup(kind, channels)


async def test_sigkill_mid_stream_then_restart_applies_every_command_once(
    killable: tuple[str, Channels, Consumer], engine: AsyncEngine
) -> None:
    kind, channels, runner = killable
    total = 40
    payloads = [register_payload(command_id=f"k-{i}") for i in range(total)]
    published = 0

    async def publish_all(client: BusClient) -> None:
        nonlocal published
        for i, p in enumerate(payloads):
            await client.publish("register", p)
            if i % 5 == 0:
                await client.publish("register", payloads[i // 2])  # a duplicate
            published = i + 1
            await asyncio.sleep(0.02)  # a steady stream of senders

    await runner.start()

    async def ready() -> bool:
        assert runner.proc is not None, runner.log.read_text()
        assert runner.proc.returncode is None, runner.log.read_text()
        return await subscribed(kind, channels)

    await eventually(ready, timeout=30, message="`registry consume` to subscribe")
    async with BusClient(kind, channels) as client:
        sender = asyncio.create_task(publish_all(client))

        async def some_applied() -> bool:
            return await event_count(engine) >= 8

        await eventually(some_applied, timeout=15, message="the first commands applied")
        assert await runner.kill() == -signal.SIGKILL
        await sender
    assert published == total
    await runner.start()

    async def all_applied() -> bool:
        return await event_count(engine) >= total

    await eventually(all_applied, timeout=40, message="every command applied after the restart")

    # let redeliveries (ack wait 2 s on NATS) come in: they must change nothing
    async def drained() -> bool:
        if kind == "nats":
            nc = await nats.connect(BROKER_URLS["nats"])
            try:
                info: Any = await nc.jetstream().consumer_info(
                    channels.nats_command_stream, channels.durable
                )
            finally:
                await nc.close()
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        conn = await aio_pika.connect(BROKER_URLS["rabbit"])
        try:
            queue = await (await conn.channel()).declare_queue(channels.queue, passive=True)
            return queue.declaration_result.message_count == 0
        finally:
            await conn.close()

    await eventually(drained, timeout=30, message="the stream drained")
    assert await runner.kill(signal.SIGTERM) == 0
    async with engine.connect() as conn:
        streams = await conn.scalar(select(func.count(func.distinct(events_table.c.stream_id))))
        top = await conn.scalar(select(func.max(events_table.c.stream_version)))
    assert (await event_count(engine), streams, top) == (total, total, 1)
