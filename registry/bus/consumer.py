"""The command consumer on `registry.users.<command>` for each broker: FastStream subscribers on
RabbitMQ, Redis and Kafka; on NATS a JetStream pull loop on the broker's own connection
(`registry.bus.nats_commands`, which keeps FastStream's wire format).

Every message's raw body goes to `replies.process`, which always returns a typed `Reply`
(FastStream sends nothing when a subscriber raises). Where the message has no reply
address, bad input is dead-lettered (RabbitMQ: the queue's dead-letter exchange; NATS: the
message is terminated) or, on Redis and Kafka, acknowledged and dropped; one log line each.

Durability per broker:
- NATS: a JetStream stream over `<prefix>.users.*` and one durable pull consumer; a message is
  acknowledged after its reply, so a consumer killed before acking gets it redelivered after
  `ack_wait`.
- RabbitMQ: a durable topic exchange, one durable queue bound to `<prefix>.users.*` with a
  dead-letter exchange; an unacknowledged message is requeued when the connection drops.
- Redis: one stream per command read by a consumer group; entries left unacknowledged by a
  dead consumer are claimed after `ack_wait` (XAUTOCLAIM) and handled again.
- Kafka: one topic per command, a consumer group; replies go to `<prefix>.replies` keyed by
  command id (FastStream cannot do request/reply against a real Kafka).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, cast

from faststream import StreamMessage

from registry.bus.brokers import broker_kind_of
from registry.bus.channels import Channels
from registry.bus.nats_commands import NatsCommandLoop
from registry.bus.replies import Handle, Reply, log_reply, process
from registry.errors import InvalidCommandError

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
        broker: Any,
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
        self._nats: NatsCommandLoop | None = None
        getattr(self, f"_wire_{self.kind}")()

    # ------------------------------------------------------------------ lifecycle
    async def prepare(self) -> None:
        if self.kind == "rabbit":
            from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

            dlx = await self.broker.declare_exchange(
                RabbitExchange(
                    self.channels.dead_letter_exchange, type=ExchangeType.FANOUT, durable=True
                )
            )
            dead = await self.broker.declare_queue(
                RabbitQueue(self.channels.dead_letter_queue, durable=True)
            )
            await dead.bind(dlx, routing_key="#")

    async def begin(self) -> None:
        """Start what runs beside FastStream's subscribers (call after `broker.start()`): the
        NATS command loop."""
        if self._nats is not None:
            await self._nats.start()

    async def finish(self, grace: float = STOP_GRACE) -> None:
        """Stop taking commands and give those running up to `grace` seconds (call before
        `broker.stop()`, which waits for FastStream's own subscribers)."""
        if self._nats is not None:
            await self._nats.stop(grace)

    async def start(self) -> None:
        await self.broker.connect()
        await self.prepare()
        await self.broker.start()
        await self.begin()

    async def stop(self) -> None:
        await self.finish()
        await self.broker.stop()

    # ------------------------------------------------------------------ shared step
    async def _decide(self, body: bytes, name: str, *, reply_to: str) -> tuple[Reply, bool]:
        """The command's reply, and whether the message is poison to reject instead (bad input
        with no reply address; its one log line is the caller's)."""
        reply = await process(body, name, self.handle, max_bytes=self.max_payload_bytes)
        if not reply_to and reply.code in POISON_CODES:
            return reply, True
        log_reply(reply)
        return reply, False

    def _message(self) -> StreamMessage[Any]:
        """The message being handled. Read from the broker's context rather than injected with
        `Context("message")`: FastDepends resolves that sync field in a worker thread, one
        thread hop per message."""
        return cast("StreamMessage[Any]", self.broker.context.get_local("message"))

    async def _run(self, message: StreamMessage[Any], name: str) -> Reply:
        reply, poison = await self._decide(message.body, name, reply_to=message.reply_to)
        if poison:
            if self.kind == "rabbit":
                await message.reject()  # to the dead-letter exchange
            else:
                await message.ack()
            _log_poison("dead-lettered" if self.kind == "rabbit" else "dropped", reply)
        return reply

    async def _run_nats(self, message: Any) -> None:
        """One command from the NATS loop: reply, then acknowledge (a command whose reply could
        not be sent stays unacknowledged and is redelivered; its command id deduplicates it)."""
        headers = message.headers or {}
        reply_to = headers.get("reply_to", "")
        name = self.channels.command_name(message.subject)
        reply, poison = await self._decide(message.data, name, reply_to=reply_to)
        if poison:
            await message.term()
            _log_poison("terminated", reply)
            return
        if reply_to:
            await self.broker.connection.publish(
                reply_to,
                reply.model_dump_json().encode(),
                headers={
                    "content-type": "application/json",
                    "correlation_id": headers.get("correlation_id", ""),
                },
            )
        await message.ack()

    # ------------------------------------------------------------------ brokers
    def _wire_nats(self) -> None:
        from nats.js.api import StreamConfig

        ch = self.channels
        self._nats = NatsCommandLoop(
            self.broker,
            stream=StreamConfig(
                name=ch.nats_command_stream, subjects=[ch.command_wildcard], max_age=86400
            ),
            subject=ch.command_wildcard,
            durable=ch.durable,
            run=self._run_nats,
            max_workers=self.max_workers,
            ack_wait=self.ack_wait,
        )

    def _wire_rabbit(self) -> None:
        from faststream.rabbit import Channel, ExchangeType, RabbitExchange, RabbitQueue

        ch = self.channels
        exchange = RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True)
        queue = RabbitQueue(
            ch.queue,
            durable=True,
            routing_key=ch.command_wildcard,
            arguments={"x-dead-letter-exchange": ch.dead_letter_exchange},
        )

        async def on_command(_body: Any) -> Reply:
            message = self._message()
            return await self._run(message, ch.command_name(message.raw_message.routing_key))

        self.broker.subscriber(
            queue,
            exchange,
            channel=Channel(prefetch_count=self.max_workers),
            include_in_schema=False,
        )(on_command)

    def _wire_redis(self) -> None:
        from faststream.redis import StreamSub

        ch = self.channels
        idle_ms = max(1, int(self.ack_wait * 1000))
        for name, channel in ch.commands.items():
            sub = StreamSub(channel, group=ch.durable, consumer=self.consumer_name)
            self.broker.subscriber(
                stream=sub, max_workers=self.max_workers, include_in_schema=False
            )(self._bound(name))
            # entries a dead consumer of the group read but never acknowledged: claimed
            # (XAUTOCLAIM) once idle for ack_wait, then handled like any other
            reclaim = StreamSub(
                channel,
                group=ch.durable,
                consumer=f"{self.consumer_name}-reclaim",
                min_idle_time=idle_ms,
                polling_interval=min(idle_ms, 1000),
            )
            self.broker.subscriber(stream=reclaim, include_in_schema=False)(self._bound(name))

    def _wire_kafka(self) -> None:
        ch = self.channels
        for name, channel in ch.commands.items():
            self.broker.subscriber(
                channel,
                group_id=ch.durable,
                auto_offset_reset="earliest",
                include_in_schema=False,
            )(self._bound(name, reply_topic=ch.replies))

    def _bound(self, name: str, reply_topic: str | None = None) -> Any:
        async def on_command(_body: Any) -> Reply:
            message = self._message()
            reply = await self._run(message, name)
            if reply_topic is not None:
                # real Kafka has no request/reply: the outcome goes to the replies topic
                key = (reply.command_id or message.correlation_id or "").encode()
                await self.broker.publish(reply, reply_topic, key=key)
            return reply

        on_command.__name__ = f"on_{name.replace('-', '_')}"
        return on_command


__all__ = ["POISON_CODES", "CommandConsumer"]
