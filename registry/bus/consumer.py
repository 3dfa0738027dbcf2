"""The command consumer: subscribers on `registry.users.<command>` for each broker.

Every subscriber takes the raw body and calls `replies.process`, which always returns a typed
`Reply` (FastStream sends nothing when a subscriber raises). Where the message has no reply
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
from typing import Any

from faststream import Context, StreamMessage

from registry.bus.brokers import broker_kind_of
from registry.bus.channels import Channels
from registry.bus.replies import Handle, Reply, log_reply, process
from registry.errors import InvalidCommandError

log = logging.getLogger("registry.bus")

POISON_CODES = frozenset({InvalidCommandError.code, "UNKNOWN_COMMAND", "PAYLOAD_TOO_LARGE"})


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

    async def start(self) -> None:
        await self.broker.connect()
        await self.prepare()
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()

    # ------------------------------------------------------------------ shared step
    async def _run(self, message: StreamMessage[Any], name: str) -> Reply:
        reply = await process(message.body, name, self.handle, max_bytes=self.max_payload_bytes)
        if not message.reply_to and reply.code in POISON_CODES:
            await self._dead_letter(message, name, reply)  # logs its one line
        else:
            log_reply(reply)
        return reply

    async def _dead_letter(self, message: StreamMessage[Any], name: str, reply: Reply) -> None:
        if self.kind in ("nats", "rabbit"):
            await message.reject()  # NATS: TERM; RabbitMQ: to the dead-letter exchange
            action = "terminated" if self.kind == "nats" else "dead-lettered"
        else:
            await message.ack()
            action = "dropped"
        log.warning(
            f"poison message {action}",
            extra={"command": name, "code": reply.code, "command_id": reply.command_id},
        )

    # ------------------------------------------------------------------ brokers
    def _wire_nats(self) -> None:
        from faststream.nats import ConsumerConfig, JStream, PullSub

        ch = self.channels
        stream = JStream(ch.nats_command_stream, subjects=[ch.command_wildcard], max_age=86400)

        async def on_command(message: StreamMessage[Any] = Context("message")) -> Reply:
            return await self._run(message, ch.command_name(message.raw_message.subject))

        self.broker.subscriber(
            ch.command_wildcard,
            stream=stream,
            durable=ch.durable,
            # nats-py 2.16 can raise a bare TimeoutError from a fetch whose deadline ran out,
            # which FastStream does not expect (it logs and restarts the fetch task): a longer
            # fetch timeout makes that rare
            pull_sub=PullSub(batch_size=self.max_workers, timeout=5.0),
            max_workers=self.max_workers,
            config=ConsumerConfig(ack_wait=self.ack_wait, max_deliver=20),
            title=f"{ch.command_wildcard}:commands",
            include_in_schema=False,
        )(on_command)

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

        async def on_command(message: StreamMessage[Any] = Context("message")) -> Reply:
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
        async def on_command(message: StreamMessage[Any] = Context("message")) -> Reply:
            reply = await self._run(message, name)
            if reply_topic is not None:
                # real Kafka has no request/reply: the outcome goes to the replies topic
                key = (reply.command_id or message.correlation_id or "").encode()
                await self.broker.publish(reply, reply_topic, key=key)
            return reply

        on_command.__name__ = f"on_{name.replace('-', '_')}"
        return on_command


__all__ = ["POISON_CODES", "CommandConsumer"]
