"""Reading a real broker directly (no tests here): what its commands stream or queue still
holds, whether a message waits for an acknowledgement, and publishing with a chosen reply
address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import aio_pika
import nats
from faststream.nats import NatsBroker
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from nats.js.errors import NotFoundError
from redis.asyncio import Redis

from registry.bus import Channels
from tests.support.bus import BROKER_URLS, Broker, BusClient


@dataclass
class Held:
    """What the broker keeps of the commands: the raw bodies still stored, and how many
    messages wait to be delivered or acknowledged."""

    bodies: list[bytes]
    waiting: int
    redelivered: int = 0


async def held(kind: str, channels: Channels) -> Held:
    if kind == "nats":
        return await _nats_held(channels)
    if kind == "rabbit":
        return await _rabbit_held(channels)
    return await _redis_held(channels)


async def _nats_held(channels: Channels) -> Held:
    nc = await nats.connect(BROKER_URLS["nats"])
    try:
        js = nc.jetstream()
        info = await js.stream_info(channels.nats_command_stream)
        bodies = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                bodies.append((await js.get_msg(channels.nats_command_stream, seq)).data or b"")
            except NotFoundError:
                continue
        consumer = await js.consumer_info(channels.nats_command_stream, channels.durable)
        return Held(
            bodies,
            consumer.num_pending + consumer.num_ack_pending,
            consumer.num_redelivered,
        )
    finally:
        await nc.close()


async def _rabbit_held(channels: Channels) -> Held:
    """Ready messages only: call with no consumer attached (unacknowledged ones are requeued
    when a consumer's connection closes)."""

    conn = await aio_pika.connect(BROKER_URLS["rabbit"])
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(channels.queue, passive=True)
        count = queue.declaration_result.message_count
        assert count is not None, "a passive declaration reports the queue's length"
        bodies = []
        while (msg := await queue.get(no_ack=False, fail=False)) is not None:
            bodies.append(msg.body)
        await channel.close()  # unacknowledged: back to the queue, as found
        return Held(bodies, count)
    finally:
        await conn.close()


async def _redis_held(channels: Channels) -> Held:
    client = Redis.from_url(BROKER_URLS["redis"])
    try:
        bodies: list[bytes] = []
        waiting = 0
        for channel in channels.commands.values():
            for _id, fields in await stream_entries(client, channel):
                bodies.append(b"".join(fields.values()))
            if await client.exists(channel):
                pending = await client.xpending(channel, channels.durable)
                waiting += int(pending["pending"])
        return Held(bodies, waiting)
    finally:
        await client.aclose()


async def publish_with_reply(client: BusClient, name: str, body: bytes, reply_to: str) -> None:
    """Publish a command whose reply goes to `reply_to` (no command id is added)."""
    ch = client.channels
    if client.kind == "nats":
        js = client.broker.connection.jetstream()
        await js.publish(
            ch.command(name),
            body,
            stream=ch.nats_command_stream,
            headers={"reply_to": reply_to, "correlation_id": "c-1"},
        )
    elif client.kind == "rabbit":
        exchange = RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True)
        await client.broker.publish(
            body, routing_key=ch.command(name), exchange=exchange, persist=True, reply_to=reply_to
        )
    else:
        await client.broker.publish(body, stream=ch.command(name), reply_to=reply_to)


def secret_in(bodies: list[bytes], *secrets: str) -> list[bytes]:
    return [b for b in bodies if any(s.encode() in b for s in secrets)]


async def close_connection(broker: Broker) -> None:
    """Cut a consumer's broker connection for good (a crash or a blip between its commit and
    its acknowledgement): what it had not acknowledged is redelivered to another."""
    if isinstance(broker, NatsBroker):
        await broker.connection.close()
    elif isinstance(broker, RabbitBroker):
        await (await broker.connect()).close()
    else:
        await (await broker.connect()).aclose()


#: an entry of a Redis stream read by a client that decodes nothing: its id and its fields
StreamEntry = tuple[bytes, dict[bytes, bytes]]


async def stream_entries(client: Redis, stream: str) -> list[StreamEntry]:
    """Every entry of a Redis stream (redis-py types the reply for every protocol and decoding
    at once; a client made without `decode_responses` gets bytes)."""
    return cast("list[StreamEntry]", await client.xrange(stream))
