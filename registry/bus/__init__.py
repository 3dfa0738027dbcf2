"""The message bus: commands in over FastStream (NATS, RabbitMQ, Redis, Kafka), typed replies
out, and the relay that publishes committed events.

    from registry.bus import running_bus, send_command, Reply
"""

from __future__ import annotations

from registry.bus.app import BusRuntime, command_handlers, running_bus
from registry.bus.brokers import broker_kind, create_broker
from registry.bus.channels import Channels
from registry.bus.client import ReplyTimeoutError, request, send_command
from registry.bus.consumer import CommandConsumer
from registry.bus.payloads import parse_command
from registry.bus.relay import EventPublisher, EventRelay, PublishedEvent, event_message
from registry.bus.replies import Reply, process

__all__ = [
    "BusRuntime",
    "Channels",
    "CommandConsumer",
    "EventPublisher",
    "EventRelay",
    "PublishedEvent",
    "Reply",
    "ReplyTimeoutError",
    "broker_kind",
    "command_handlers",
    "create_broker",
    "event_message",
    "parse_command",
    "process",
    "request",
    "running_bus",
    "send_command",
]
