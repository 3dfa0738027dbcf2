"""Sending a command and waiting for its reply (what `registry send` does).

RabbitMQ and Redis use FastStream's request/reply; NATS a JetStream request with one reply
subscription per connection (`registry.bus.nats_commands.NatsRequester`). Kafka has none: the
command is published and the reply is read from `<prefix>.replies`, matched on the command id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

from registry.bus.brokers import (
    Broker,
    broker_kind,
    broker_kind_of,
    create_broker,
    is_nats,
    is_rabbit,
    is_redis,
)
from registry.bus.channels import Channels
from registry.bus.nats_commands import NatsRequester
from registry.bus.replies import Reply

if TYPE_CHECKING:
    from faststream import StreamMessage
    from faststream.kafka import KafkaBroker

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.


class ReplyTimeoutError(TimeoutError):
    """No reply arrived in time (no consumer running, or it is slow)."""


def with_command_id(payload: str | bytes) -> tuple[bytes, str | None]:
    """The payload with a fresh `command_id` added when it is a JSON object without one, so a
    retry of the same bytes is deduplicated. Anything else is sent exactly as given."""
    raw = payload.encode() if isinstance(payload, str) else payload
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw, None
    if not isinstance(data, dict):
        return raw, None
    if isinstance(data.get("command_id"), str):
        return raw, data["command_id"]
    data["command_id"] = str(uuid.uuid4())
    return json.dumps(data).encode(), data["command_id"]


async def request(
    broker: Broker,
    name: str,
    body: bytes,
    *,
    timeout: float,
    channels: Channels | None = None,
) -> Reply:
    """Send `body` on the command channel of `name` over a connected NATS/RabbitMQ/Redis broker
    and return the reply; `ReplyTimeoutError` when none comes within `timeout` seconds."""
    ch = channels or Channels()
    channel = ch.command(name)
    broker_kind_of(broker)  # a TypeError for anything but a FastStream broker
    try:
        if is_nats(broker):
            raw = await NatsRequester.for_broker(broker).request(
                channel,
                body,
                stream=ch.nats_command_stream,
                timeout=timeout,
                correlation_id=str(uuid.uuid4()),
            )
            return Reply.model_validate_json(raw.data)
        if is_rabbit(broker):
            from faststream.rabbit import (  # noqa: PLC0415 broker client, loaded on use
                ExchangeType,
                RabbitExchange,
            )

            msg: StreamMessage[Any] = await broker.request(
                body,
                routing_key=channel,
                exchange=RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True),
                timeout=timeout,
                persist=True,
            )
        elif is_redis(broker):
            msg = await broker.request(body, stream=channel, timeout=timeout)
        else:
            raise ValueError("Kafka has no request/reply: use send_command()")
    except TimeoutError as exc:
        raise ReplyTimeoutError(f"no reply on {channel} within {timeout:g}s") from exc
    return Reply.model_validate(await msg.decode())


async def _kafka_send(
    broker: KafkaBroker, name: str, body: bytes, command_id: str, timeout: float, ch: Channels
) -> Reply:
    loop = asyncio.get_running_loop()
    found: asyncio.Future[Reply] = loop.create_future()

    async def on_reply(reply: dict[str, Any]) -> None:
        parsed = Reply.model_validate(reply)
        if parsed.command_id == command_id and not found.done():
            found.set_result(parsed)

    broker.subscriber(ch.replies, auto_offset_reset="latest")(on_reply)

    await broker.start()
    await broker.publish(body, ch.command(name), key=command_id.encode())
    try:
        return await asyncio.wait_for(found, timeout)
    except TimeoutError as exc:
        raise ReplyTimeoutError(f"no reply on {ch.replies} within {timeout:g}s") from exc


async def send_command(
    url: str,
    name: str,
    payload: str | bytes,
    *,
    timeout: float,
    channels: Channels | None = None,
) -> Reply:
    """Connect to the broker at `url`, send one command, return its reply."""
    ch = channels or Channels()
    body, command_id = with_command_id(payload)
    broker = create_broker(url)
    try:
        if broker_kind(url) == "kafka":
            return await _kafka_send(
                broker, name, body, command_id or str(uuid.uuid4()), timeout, ch
            )
        await broker.connect()
        return await request(broker, name, body, timeout=timeout, channels=ch)
    finally:
        await broker.stop()
