"""The event relay: every committed event, in log order, to `registry.events.<EventType>`.

`EventRelay` is a checkpointed subscriber on the projection worker machinery (its own
projection name, "relay"), so it resumes where it stopped and a replay of another projection
never republishes. Delivery is at least once: a batch's checkpoint commits only after every
event in it was published (and, on NATS JetStream, acknowledged by the server). The event id is
the message id (`Nats-Msg-Id` on NATS, so JetStream drops a republished duplicate within its
duplicate window; `message_id` on RabbitMQ; a `message_id` header on Redis and Kafka).
Payloads carry `Event.redacted()`: no password hash, no OAuth token ever leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from events import RecordedEvent
from registry.bus.brokers import broker_kind_of
from registry.bus.channels import Channels

log = logging.getLogger("registry.bus.relay")

RELAY_NAME = "relay"
DUPLICATE_WINDOW_SECONDS = 120.0


class PublishedEvent(BaseModel):
    """What the relay publishes for each event: the envelope, the metadata, and the payload
    with secrets replaced by "[redacted]"."""

    event_id: UUID
    event_type: str
    schema_version: int
    stream_id: UUID
    stream_version: int
    position: int
    recorded_at: datetime
    metadata: dict[str, Any]
    data: dict[str, Any]


def event_message(recorded: RecordedEvent) -> dict[str, Any]:
    """The published form of a stored event (see `PublishedEvent`)."""
    return PublishedEvent(
        event_id=recorded.event_id,
        event_type=recorded.event_type,
        schema_version=type(recorded.event).schema_version,
        stream_id=recorded.stream_id,
        stream_version=recorded.stream_version,
        position=recorded.position,
        recorded_at=recorded.recorded_at,
        metadata=recorded.metadata.as_json(),
        data=recorded.event.redacted(),
    ).model_dump(mode="json")


class EventPublisher:
    """Publishes one event message on a connected broker, waiting for the broker's confirmation
    where it gives one (JetStream PubAck, RabbitMQ publisher confirm)."""

    def __init__(self, broker: Any, channels: Channels | None = None) -> None:
        self.broker = broker
        self.channels = channels or Channels()
        self.kind = broker_kind_of(broker)

    async def prepare(self) -> None:
        """Declare where events go (call once the broker is connected)."""
        ch = self.channels
        if self.kind == "nats":
            from nats.js.api import StreamConfig
            from nats.js.errors import BadRequestError

            js = self.broker.connection.jetstream()
            config = StreamConfig(
                name=ch.nats_event_stream,
                subjects=[ch.event_wildcard],
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
            try:
                await js.add_stream(config)
            except BadRequestError:  # exists with another config
                await js.update_stream(config)
        elif self.kind == "rabbit":
            from faststream.rabbit import ExchangeType, RabbitExchange

            await self.broker.declare_exchange(
                RabbitExchange(ch.event_exchange, type=ExchangeType.TOPIC, durable=True)
            )

    async def publish(self, recorded: RecordedEvent) -> None:
        body = event_message(recorded)
        subject = self.channels.event(recorded.event_type)
        event_id = str(recorded.event_id)
        if self.kind == "nats":
            await self.broker.publish(
                body,
                subject,
                headers={"Nats-Msg-Id": event_id},
                correlation_id=event_id,
                stream=self.channels.nats_event_stream,
                timeout=5.0,
            )
        elif self.kind == "rabbit":
            from faststream.rabbit import ExchangeType, RabbitExchange

            await self.broker.publish(
                body,
                routing_key=subject,
                exchange=RabbitExchange(
                    self.channels.event_exchange, type=ExchangeType.TOPIC, durable=True
                ),
                message_id=event_id,
                correlation_id=event_id,
                persist=True,
            )
        elif self.kind == "redis":
            await self.broker.publish(
                body, stream=subject, headers={"message_id": event_id}, correlation_id=event_id
            )
        else:
            await self.broker.publish(
                body,
                subject,
                key=str(recorded.stream_id).encode(),
                headers={"message_id": event_id},
                correlation_id=event_id,
            )


class EventRelay:
    """A `projections.worker.Subscriber`: publishes each batch in log order. Raising (broker
    down) leaves the checkpoint where it was, so the batch is published again later."""

    def __init__(self, publisher: EventPublisher, name: str = RELAY_NAME) -> None:
        self.publisher = publisher
        self.name = name
        self.published = 0

    async def handle(self, conn: Any, batch: Sequence[RecordedEvent]) -> None:
        for recorded in batch:
            await self.publisher.publish(recorded)
            self.published += 1
        if batch:
            log.debug(
                "events relayed",
                extra={"count": len(batch), "last_position": batch[-1].position},
            )
