"""The command consumer on `registry.users.<command>` for each broker: FastStream subscribers on
RabbitMQ, Redis and Kafka; on NATS a JetStream pull loop on the broker's own connection
(`registry.bus.nats_commands`, which keeps FastStream's wire format).

Every message's raw body goes to `replies.process`, which always returns a typed `Reply`
(FastStream sends nothing when a subscriber raises; here the consumer sends the reply itself).
Where the message has no reply address, bad input is dead-lettered (RabbitMQ: the queue's
dead-letter exchange; NATS: the message is terminated) or, on Redis and Kafka, acknowledged
and dropped; one log line each.

One effect per published message: a command without a `command_id` takes the message's
identity on the broker as its id (`bus:nats:<stream>:<created>:<sequence>`,
`bus:amqp:<queue>:<message id>`, `bus:redis:<stream>:<entry id>`,
`bus:kafka:<topic>:<partition>:<offset>`), so a redelivery (a consumer killed after the
commit, a lost acknowledgement) returns the first outcome. A message is acknowledged once its
command has run, also when the reply cannot be sent (logged once, at WARNING).

What the consumer reads on each broker is declared in `registry.bus.subscriptions`, which the
AsyncAPI document (`registry.bus.asyncapi`) is built from as well.

Durability per broker (what stays on the broker: `registry.bus.retention`):
- NATS: a work-queue JetStream stream over `<prefix>.users.*` and one durable pull consumer;
  a message is acknowledged after its reply, so a consumer killed before acking gets it
  redelivered after `ack_wait`.
- RabbitMQ: a durable topic exchange, one bounded durable queue bound to `<prefix>.users.*`
  with a dead-letter exchange; an unacknowledged message is requeued when the connection drops.
- Redis: one stream per command read by a consumer group; an entry is deleted once
  acknowledged; entries left unacknowledged by a dead consumer are claimed after `ack_wait`
  (XAUTOCLAIM) and handled again.
- Kafka: one topic per command, a consumer group; replies go to `<prefix>.replies` keyed by
  command id (FastStream cannot do request/reply against a real Kafka).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from faststream import StreamMessage

from registry.bus.brokers import Broker, broker_kind_of, is_kafka, is_nats, is_rabbit, is_redis
from registry.bus.channels import Channels
from registry.bus.nats_commands import ConsumerTiming, NatsCommandLoop
from registry.bus.replies import Handle, Reply, bus_id, log_reply, process
from registry.bus.retention import (
    command_queue_arguments,
    command_stream_config,
    dead_letter_queue_arguments,
    ensure_queue,
    trim_redis_streams,
)
from registry.bus.subscriptions import Subscriptions
from registry.errors import InvalidCommandError

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from faststream.nats import NatsBroker
    from faststream.rabbit import RabbitBroker
    from faststream.redis import RedisBroker
    from nats.aio.msg import Msg

log = logging.getLogger("registry.bus")

POISON_CODES = frozenset({InvalidCommandError.code, "UNKNOWN_COMMAND", "PAYLOAD_TOO_LARGE"})
#: seconds the commands still running at shutdown get to finish
STOP_GRACE = 10.0


def _log_poison(action: str, reply: Reply) -> None:
    log.warning(
        f"poison message {action}",
        extra={"command": reply.command, "code": reply.code, "command_id": reply.command_id},
    )


class CommandConsumer:
    """Wires the command subscribers onto `broker`. Start and stop the broker as usual;
    `prepare()` (called by `start()`) declares what FastStream does not (RabbitMQ's DLX)."""

    def __init__(
        self,
        broker: Broker,
        handle: Handle,
        *,
        channels: Channels | None = None,
        max_payload_bytes: int = 64 * 1024,
        max_workers: int = 8,
        ack_wait: float = 30.0,
        consumer_name: str | None = None,
    ) -> None:
        self.broker = broker
        self.handle = handle
        self.channels = channels or Channels()
        self.max_payload_bytes = max_payload_bytes
        self.max_workers = max_workers
        self.ack_wait = ack_wait
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.kind = broker_kind_of(broker)
        #: what this consumer reads, as `registry.bus.asyncapi` documents it
        self.subscriptions = Subscriptions(self.kind, self.channels, self.consumer_name, ack_wait)
        self._nats: NatsCommandLoop | None = None
        self._trimmer: asyncio.Task[None] | None = None
        #: NATS: called with each replied command's times when set (the benchmark's breakdown)
        self.observe: Callable[[ConsumerTiming], None] | None = None
        if is_nats(broker):
            self._wire_nats(broker)
        elif is_rabbit(broker):
            self._wire_rabbit(broker)
        elif is_redis(broker):
            self._wire_redis(broker)
        else:
            self._wire_kafka(broker)

    # ------------------------------------------------------------------ lifecycle
    async def prepare(self) -> None:
        """RabbitMQ: the dead-letter exchange, and both queues with bounded retention
        (`registry.bus.retention.ensure_queue` migrates or keeps an older declaration)."""
        broker = self.broker
        if is_rabbit(broker):
            from faststream.rabbit import (  # noqa: PLC0415 broker client, loaded on use
                ExchangeType,
                RabbitExchange,
                RabbitQueue,
            )

            ch = self.channels
            connection = await broker.connect()
            dlx = await broker.declare_exchange(
                RabbitExchange(ch.dead_letter_exchange, type=ExchangeType.FANOUT, durable=True)
            )
            await ensure_queue(connection, ch.dead_letter_queue, dead_letter_queue_arguments())
            dead = await broker.declare_queue(
                RabbitQueue(ch.dead_letter_queue, durable=True, declare=False)
            )
            await dead.bind(dlx, routing_key="#")
            await ensure_queue(
                connection, ch.queue, command_queue_arguments(ch.dead_letter_exchange)
            )
            # FastStream binds only a queue it declares itself
            commands = await broker.declare_exchange(
                RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True)
            )
            queue = await broker.declare_queue(RabbitQueue(ch.queue, durable=True, declare=False))
            await queue.bind(commands, routing_key=ch.command_wildcard)

    async def begin(self) -> None:
        """Start what runs beside FastStream's subscribers (call after `broker.start()`): the
        NATS command loop; on Redis, the trimming of commands older than `COMMAND_MAX_AGE`."""
        if self._nats is not None:
            await self._nats.start()
        if is_redis(self.broker):
            client = await self.broker.connect()
            streams = list(dict.fromkeys(sub.address for sub in self.subscriptions))
            self._trimmer = asyncio.create_task(trim_redis_streams(client, streams))

    async def finish(self, grace: float = STOP_GRACE) -> None:
        """Stop taking commands and give those running up to `grace` seconds (call before
        `broker.stop()`, which waits for FastStream's own subscribers)."""
        if self._nats is not None:
            await self._nats.stop(grace)
        if self._trimmer is not None:
            self._trimmer.cancel()
            await asyncio.wait({self._trimmer})
            self._trimmer = None

    async def start(self) -> None:
        await self.broker.connect()
        await self.prepare()
        await self.broker.start()
        await self.begin()

    async def stop(self) -> None:
        await self.finish()
        await self.broker.stop()

    # ------------------------------------------------------------------ shared step
    async def _decide(
        self, body: bytes, name: str, *, reply_to: str, bus_id: str | None
    ) -> tuple[Reply, bool]:
        """The command's reply, and whether the message is poison to reject instead (bad input
        with no reply address; its one log line is the caller's)."""
        reply = await process(
            body, name, self.handle, max_bytes=self.max_payload_bytes, bus_id=bus_id
        )
        if not reply_to and reply.code in POISON_CODES:
            return reply, True
        log_reply(reply)
        return reply, False

    def _message(self) -> StreamMessage[Any]:
        """The message being handled. Read from the broker's context rather than injected with
        `Context("message")`: FastDepends resolves that sync field in a worker thread, one
        thread hop per message."""
        return cast("StreamMessage[Any]", self.broker.context.get_local("message"))

    def _bus_id(self, message: StreamMessage[Any]) -> str | None:
        """The message's identity on the broker, stable across redeliveries (None when it has
        none: an AMQP message published without a message id)."""
        raw = message.raw_message
        if self.kind == "rabbit":
            return bus_id("amqp", self.channels.queue, raw.message_id) if raw.message_id else None
        if self.kind == "redis":
            (entry,) = raw["message_ids"]
            return bus_id("redis", raw["channel"], entry.decode())
        return bus_id("kafka", raw.topic, raw.partition, raw.offset)

    async def _reply(self, reply: Reply, publish: Callable[[], Awaitable[object]]) -> None:
        """Send `reply`; a failure is logged once and swallowed: the command has had its
        effect, and its message is acknowledged all the same (a redelivery would only answer
        again)."""
        try:
            await publish()
        except Exception as exc:  # noqa: BLE001 whatever failed, the command has had its effect
            log.warning(
                "reply not sent",
                extra={
                    "command": reply.command,
                    "command_id": reply.command_id,
                    "error": type(exc).__name__,
                },
            )

    async def _settle(self, message: StreamMessage[Any]) -> None:
        """Acknowledge; on Redis also delete the entry, so no command stays in the stream."""
        await message.ack()
        if self.kind == "redis":
            try:
                await message.delete()  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 the age trim removes it; it is acknowledged
                log.warning("handled command not deleted", extra={"error": type(exc).__name__})

    async def _run(self, message: StreamMessage[Any], name: str, reply_topic: str = "") -> None:
        """One command from a FastStream subscriber (RabbitMQ, Redis, Kafka): run, reply (to
        the message's reply address, or on Kafka to `reply_topic`), acknowledge."""
        reply_to = message.reply_to
        reply, poison = await self._decide(
            message.body, name, reply_to=reply_to, bus_id=self._bus_id(message)
        )
        if poison:
            if self.kind == "rabbit":
                await message.reject()  # to the dead-letter exchange
            else:
                await self._settle(message)
            _log_poison("dead-lettered" if self.kind == "rabbit" else "dropped", reply)
        broker = self.broker
        if reply_topic and is_kafka(broker):
            # real Kafka has no request/reply: the outcome goes to the replies topic
            key = (reply.command_id or message.correlation_id or "").encode()
            await self._reply(reply, lambda: broker.publish(reply, reply_topic, key=key))
        elif reply_to and not poison:
            await self._reply(reply, lambda: self._publish_reply(reply, message))
        if not poison:
            await self._settle(message)

    def _publish_reply(self, reply: Reply, message: StreamMessage[Any]) -> Awaitable[object]:
        """What FastStream's own reply would be: JSON to the reply address, same correlation
        id (a `queue|exchange` address on RabbitMQ names the exchange too). RabbitMQ and Redis
        only: NATS replies in `_run_nats`, Kafka on the replies topic."""
        target = message.reply_to
        broker = self.broker
        if is_rabbit(broker):
            queue, _, exchange = target.partition("|")
            return broker.publish(
                reply,
                routing_key=queue,
                exchange=exchange or None,
                correlation_id=message.correlation_id,
            )
        if is_redis(broker):
            return broker.publish(reply, channel=target, correlation_id=message.correlation_id)
        raise TypeError(f"no reply address on {self.kind}")

    async def _run_nats(self, message: Msg, identity: str, fetched: float) -> None:
        """One command from the NATS loop: reply, then acknowledge, also when the reply could
        not be sent (the command has had its effect; a redelivery would run it again)."""
        headers = message.headers or {}
        reply_to = headers.get("reply_to", "")
        name = self.channels.command_name(message.subject)
        observe = self.observe
        started = time.time() if observe is not None else 0.0
        reply, poison = await self._decide(message.data, name, reply_to=reply_to, bus_id=identity)
        handled = time.time() if observe is not None else 0.0
        if poison:
            await message.term()
            _log_poison("terminated", reply)
            return
        broker = self.broker
        if reply_to and is_nats(broker):
            connection = broker.connection
            body = reply.model_dump_json().encode()
            reply_headers = {
                "content-type": "application/json",
                "correlation_id": headers.get("correlation_id", ""),
            }
            await self._reply(
                reply,
                lambda: connection.publish(reply_to, body, headers=reply_headers),
            )
            if observe is not None:
                observe(
                    ConsumerTiming(
                        reply_headers["correlation_id"],
                        message.metadata.timestamp.timestamp(),
                        fetched,
                        started,
                        handled,
                        time.time(),
                    )
                )
        await message.ack()

    # ------------------------------------------------------------------ brokers
    def _wire_nats(self, broker: NatsBroker) -> None:
        ch = self.channels
        (sub,) = self.subscriptions
        self._nats = NatsCommandLoop(
            broker,
            stream=command_stream_config(
                ch.nats_command_stream, [sub.address], self.max_payload_bytes
            ),
            subject=sub.address,
            durable=ch.durable,
            run=self._run_nats,
            max_workers=self.max_workers,
            ack_wait=self.ack_wait,
        )

    def _wire_rabbit(self, broker: RabbitBroker) -> None:
        from faststream.rabbit import Channel  # noqa: PLC0415 broker client, loaded on use

        ch = self.channels

        async def on_command(_body: object) -> None:
            message = self._message()
            await self._run(message, ch.command_name(message.raw_message.routing_key))

        (sub,) = self.subscriptions
        args, options = self.subscriptions.subscriber_args(sub)
        broker.subscriber(
            *args,
            **options,
            channel=Channel(prefetch_count=self.max_workers),
            decoder=_raw_body,
            no_reply=True,
            include_in_schema=False,
        )(on_command)

    def _wire_redis(self, broker: RedisBroker) -> None:
        for sub in self.subscriptions:
            args, options = self.subscriptions.subscriber_args(sub)
            if not sub.reclaim:
                options["max_workers"] = self.max_workers
            (command,) = sub.channels
            broker.subscriber(
                *args, **options, decoder=_raw_body, no_reply=True, include_in_schema=False
            )(self._bound(command.name))

    def _wire_kafka(self, broker: KafkaBroker) -> None:
        for sub in self.subscriptions:
            args, options = self.subscriptions.subscriber_args(sub)
            (command,) = sub.channels
            broker.subscriber(
                *args, **options, decoder=_raw_body, no_reply=True, include_in_schema=False
            )(self._bound(command.name, reply_topic=self.channels.replies))

    def _bound(self, name: str, reply_topic: str = "") -> Callable[[object], Awaitable[None]]:
        # `object`: FastStream validates the body against this annotation, and the body is
        # any bytes (`_raw_body`)
        async def on_command(_body: object) -> None:
            await self._run(self._message(), name, reply_topic)

        on_command.__name__ = f"on_{name.replace('-', '_')}"
        return on_command


def _raw_body(message: StreamMessage[Any]) -> bytes:
    """The body as sent: FastStream's own decoder would parse JSON first, and raise on input
    `registry.bus.payloads` answers (deep nesting, a JSON content type on a broken body)."""
    return message.body


__all__ = ["POISON_CODES", "CommandConsumer"]
