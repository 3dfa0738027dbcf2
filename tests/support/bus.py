"""Shared pieces of the bus tests (no tests here): real brokers on 127.0.0.1, a unique bus
prefix per test so runs never share a stream or a queue, and cleanup afterwards.

A broker that is not running makes the tests FAIL (connection errors), never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import aio_pika
import nats
from faststream.nats import NatsBroker
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from faststream.redis import RedisBroker
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from events.tables import events as events_table
from events.tables import metadata as events_metadata
from projections.tables import metadata as projections_metadata
from registry.bootstrap import Container
from registry.bus import Channels, Reply, create_broker, request, running_bus
from registry.settings import Settings
from registry.tables import metadata as registry_metadata

#: the brokers these tests run on, as `create_broker` builds them from a URL
Broker: TypeAlias = NatsBroker | RabbitBroker | RedisBroker
#: a command as sent: raw bytes, or a JSON object to encode
Payload: TypeAlias = bytes | Mapping[str, object]

BROKER_URLS = {
    "nats": "nats://127.0.0.1:4222",
    "rabbit": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379",
}
BROKERS = list(BROKER_URLS)
MAX_PAYLOAD = 4096
TIMEOUT = 10.0


def unique_prefix() -> str:
    return f"bt{uuid.uuid4().hex[:10]}"


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
        await conn.run_sync(projections_metadata.create_all)


def make_container(
    engine: AsyncEngine, url: str, prefix: str, *, max_payload: int = MAX_PAYLOAD
) -> Container:
    settings = Settings(
        database_url=str(engine.url.render_as_string(False)),
        broker_url=url,
        bus_prefix=prefix,
        max_payload_bytes=max_payload,
        lease_ttl=2.0,
    )
    return Container(
        settings=settings,
        engine=engine,
        store=EventStore(engine),
        user_table=None,  # type: ignore[arg-type]  # the bus tests project no read model
        oauth_table=None,
    )


async def event_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(events_table)) or 0)


class BusClient:
    """A sender on its own connection: request/reply and fire-and-forget publish."""

    def __init__(self, kind: str, channels: Channels) -> None:
        self.kind = kind
        self.channels = channels
        self.broker = create_broker(BROKER_URLS[kind])

    async def __aenter__(self) -> BusClient:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()

    async def send(self, name: str, payload: Payload, timeout: float = TIMEOUT) -> Reply:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await request(self.broker, name, body, timeout=timeout, channels=self.channels)

    async def publish(self, name: str, payload: Payload) -> None:
        """Publish without a reply address (what a fire-and-forget sender does)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ch = self.channels
        if self.kind == "nats":
            await self.broker.publish(body, ch.command(name), stream=ch.nats_command_stream)
        elif self.kind == "rabbit":
            exchange = RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True)
            await self.broker.publish(
                body, routing_key=ch.command(name), exchange=exchange, persist=True
            )
        else:
            await self.broker.publish(body, stream=ch.command(name))


@contextlib.asynccontextmanager
async def consumer(
    container: Container, kind: str, *, relay: bool = False, ack_wait: float = 30.0
) -> AsyncIterator[Any]:
    broker = create_broker(BROKER_URLS[kind])
    async with running_bus(
        container,
        broker=broker,
        channels=Channels(container.settings.bus_prefix),
        relay=relay,
        ack_wait=ack_wait,
    ) as runtime:
        yield runtime


@contextlib.asynccontextmanager
async def bus_setup(
    engine: AsyncEngine, url: str, kinds: Sequence[str]
) -> AsyncIterator[tuple[Container, Channels]]:
    """Tables, a container on a unique bus prefix, and afterwards the cleanup of `kinds`."""
    await create_tables(engine)
    prefix = unique_prefix()
    channels = Channels(prefix)
    try:
        yield make_container(engine, url, prefix), channels
    finally:
        for kind in kinds:
            await cleanup(kind, channels)


async def cleanup(kind: str, channels: Channels) -> None:
    """Remove what a test declared on the broker."""
    if kind == "nats":
        nc = await nats.connect(BROKER_URLS["nats"])
        try:
            js = nc.jetstream()
            for name in (channels.nats_command_stream, channels.nats_event_stream):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        finally:
            await nc.close()
    elif kind == "rabbit":
        conn = await aio_pika.connect(BROKER_URLS["rabbit"])
        try:
            for queue in (channels.queue, channels.dead_letter_queue):
                ch = await conn.channel()
                with contextlib.suppress(Exception):
                    await ch.queue_delete(queue)
            for exchange in (
                channels.exchange,
                channels.dead_letter_exchange,
                channels.event_exchange,
            ):
                ch = await conn.channel()
                with contextlib.suppress(Exception):
                    await ch.exchange_delete(exchange)
        finally:
            await conn.close()
    else:
        client = Redis.from_url(BROKER_URLS["redis"])
        try:
            keys = [k async for k in client.scan_iter(match=f"{channels.prefix}.*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


#: a stand-in password hash: tests look for it in replies, logs and events (hashing a real
#: password is deliberately slow, which would make the bus tests measure the hasher)
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0LWhhc2g$not-a-real-hash-but-a-secret"


def register_payload(
    email: str | None = None, *, password: str | None = None, **extra: object
) -> dict[str, Any]:
    secret = {"password": password} if password else {"hashed_password": FAKE_HASH}
    return {"email": email or f"u{uuid.uuid4().hex[:8]}@example.com", **secret, **extra}


REGISTRY = str(Path(sys.executable).with_name("registry"))


async def cli(
    *args: str, env: dict[str, str], timeout: float = 30, stdin: str | None = None
) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        REGISTRY,
        *args,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    feed = stdin.encode() if stdin is not None else None
    out, err = await asyncio.wait_for(proc.communicate(feed), timeout)
    text = out.decode()
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = text
    return proc.returncode or 0, data, err.decode()


class NatsEvents:
    """Reads the relay's JetStream stream from the beginning."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.messages: list[Any] = []

    async def count(self) -> int:
        nc = await nats.connect(BROKER_URLS["nats"])
        try:
            info = await nc.jetstream().stream_info(self.channels.nats_event_stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    async def read_all(self) -> list[Any]:
        nc = await nats.connect(BROKER_URLS["nats"])
        try:
            js = nc.jetstream()
            n = await self.count_with(js)
            sub = await js.pull_subscribe(
                self.channels.event_wildcard, stream=self.channels.nats_event_stream
            )
            out: list[Any] = []
            while len(out) < n:
                out.extend(await sub.fetch(n - len(out), timeout=5))
            for m in out:
                await m.ack()
            return out
        finally:
            await nc.close()

    async def count_with(self, js: JetStreamContext) -> int:
        info = await js.stream_info(self.channels.nats_event_stream)
        return int(info.state.messages)
