"""Names on the bus: command channels, event channels, replies, and each broker's durable
objects (JetStream streams, RabbitMQ exchanges and queues, Redis consumer groups).

Everything derives from one prefix (default ``registry``, setting ``REGISTRY_BUS_PREFIX``), so
test runs and side-by-side deployments never share a queue or a stream.

`Channels.command_channels` is the table of commands on the bus (`CommandChannel`: name,
channel, command model, reply model); the consumer's subscriptions
(`registry.bus.subscriptions`) and the AsyncAPI document are both built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.bus.replies import Reply
from registry.domain.commands import COMMANDS, Command

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True, slots=True)
class CommandChannel:
    """One command on the bus: its `name`, the channel (`address`) it is sent on, the model
    its payload is validated against (`command`) and the model of the reply it gets."""

    name: str
    address: str
    command: type[Command]
    reply: type[Reply] = Reply


@dataclass(frozen=True, slots=True)
class Channels:
    prefix: str = "registry"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"bus prefix must be dot-separated words, got {self.prefix!r}")

    # ------------------------------------------------------------------ commands
    def command(self, name: str) -> str:
        """The channel of one command: ``registry.users.<name>``."""
        return f"{self.prefix}.users.{name}"

    @property
    def commands(self) -> dict[str, str]:
        return {name: self.command(name) for name in COMMANDS}

    @property
    def command_channels(self) -> tuple[CommandChannel, ...]:
        """Every command the consumer takes, in `registry.domain.commands.COMMANDS` order."""
        return tuple(
            CommandChannel(name, self.command(name), cls) for name, cls in COMMANDS.items()
        )

    @property
    def command_wildcard(self) -> str:
        return f"{self.prefix}.users.*"

    def command_name(self, channel: str) -> str:
        """``registry.users.register`` → ``register`` (whatever follows the users prefix)."""
        head = f"{self.prefix}.users."
        return channel[len(head) :] if channel.startswith(head) else channel

    @property
    def replies(self) -> str:
        """Kafka only: where outcomes are published, keyed by command id."""
        return f"{self.prefix}.replies"

    # ------------------------------------------------------------------ events
    def event(self, event_type: str) -> str:
        return f"{self.prefix}.events.{event_type}"

    @property
    def event_wildcard(self) -> str:
        return f"{self.prefix}.events.*"

    # ------------------------------------------------------------------ broker objects
    @property
    def _token(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix)

    @property
    def nats_command_stream(self) -> str:
        return f"{self._token}_commands".upper()

    @property
    def nats_event_stream(self) -> str:
        return f"{self._token}_events".upper()

    @property
    def durable(self) -> str:
        """JetStream durable consumer, Redis/Kafka consumer group."""
        return f"{self._token}-commands"

    @property
    def exchange(self) -> str:
        """RabbitMQ topic exchange for commands (routing key = command channel)."""
        return f"{self.prefix}.commands"

    @property
    def queue(self) -> str:
        """RabbitMQ durable queue that receives every command."""
        return f"{self.prefix}.users"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.users.dead"

    @property
    def event_exchange(self) -> str:
        """RabbitMQ topic exchange the relay publishes events to."""
        return f"{self.prefix}.events"
