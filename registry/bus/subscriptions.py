"""Where the command consumer reads commands on each broker: the one declaration that
`registry.bus.consumer` opens and `registry.bus.asyncapi` documents, so the two cannot differ.

A `Subscription` is one reader: the address it reads (a NATS subject, a RabbitMQ routing key,
a Redis stream, a Kafka topic; a wildcard where every command comes through one reader) and
the command channels (`Channels.command_channels`) that arrive there.
`Subscriptions.subscriber_args` gives FastStream's `broker.subscriber(...)` arguments for a
reader: the consumer passes them as they are, the document narrows a wildcard reader to one
channel per command.

- NATS: one JetStream pull consumer (durable `Channels.durable`) on the command stream, over
  `<prefix>.users.*` (run by `registry.bus.nats_commands`, not a FastStream subscriber).
- RabbitMQ: one durable queue `<prefix>.users` bound to the topic exchange `<prefix>.commands`
  by `<prefix>.users.*`; a command's channel is its routing key.
- Redis: one stream per command read by the consumer group `Channels.durable`, and a second
  reader per stream that claims what a dead consumer of the group left unacknowledged.
- Kafka: one topic per command, read by the consumer group `Channels.durable`.

A command nobody declared still reaches the NATS and RabbitMQ readers (and gets
UNKNOWN_COMMAND); on Redis and Kafka only declared commands are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from registry.bus.channels import Channels, CommandChannel


@dataclass(frozen=True, slots=True)
class Subscription:
    """One reader of commands: `address` (a wildcard where several commands arrive) and the
    command channels that arrive there."""

    address: str
    channels: tuple[CommandChannel, ...]
    #: Redis: the second reader of a stream, claiming (XAUTOCLAIM) entries a dead consumer of
    #: the group read but left unacknowledged for `ack_wait`; the stream is the same channel
    reclaim: bool = False


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """The command readers on a broker of `kind` for the names in `channels`. `consumer_name`
    is this process's name in the Redis consumer group."""

    kind: str  # `registry.bus.brokers.Kind`
    channels: Channels
    consumer_name: str
    ack_wait: float = 30.0

    def __iter__(self) -> Iterator[Subscription]:
        commands = self.channels.command_channels
        if self.kind in ("nats", "rabbit"):
            yield Subscription(self.channels.command_wildcard, commands)
            return
        for command in commands:
            yield Subscription(command.address, (command,))
            if self.kind == "redis":
                yield Subscription(command.address, (command,), reclaim=True)

    def subscriber_args(
        self, sub: Subscription, address: str | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """FastStream's `broker.subscriber(*args, **options)` for `sub`, or for one channel
        (`address`) of a wildcard reader, which documents that channel."""
        address = address or sub.address
        ch = self.channels
        # only the broker in use is imported: the four clients together weigh on start-up
        if self.kind == "nats":
            from faststream.nats import JStream  # noqa: PLC0415 broker client, loaded on use

            # the consumer reads `sub.address` with its own pull loop; these arguments say
            # the same to the document. The stream is declared by the loop, with its retention
            stream = JStream(ch.nats_command_stream, subjects=[sub.address], declare=False)
            return (address,), {"stream": stream, "durable": ch.durable, "pull_sub": True}
        if self.kind == "rabbit":
            from faststream.rabbit import (  # noqa: PLC0415 broker client, loaded on use
                ExchangeType,
                RabbitExchange,
                RabbitQueue,
            )

            exchange = RabbitExchange(ch.exchange, type=ExchangeType.TOPIC, durable=True)
            # declared and bound by the consumer's `prepare` (or kept, when it cannot be
            # migrated)
            queue = RabbitQueue(ch.queue, durable=True, routing_key=address, declare=False)
            return (queue, exchange), {}
        if self.kind == "redis":
            from faststream.redis import StreamSub  # noqa: PLC0415 broker client, loaded on use

            if not sub.reclaim:
                entries = StreamSub(address, group=ch.durable, consumer=self.consumer_name)
            else:
                idle_ms = max(1, int(self.ack_wait * 1000))
                entries = StreamSub(
                    address,
                    group=ch.durable,
                    consumer=f"{self.consumer_name}-reclaim",
                    min_idle_time=idle_ms,
                    polling_interval=min(idle_ms, 1000),
                )
            return (), {"stream": entries}
        return (address,), {"group_id": ch.durable, "auto_offset_reset": "earliest"}


__all__ = ["Subscription", "Subscriptions"]
