"""The event relay: every committed event, in log order, to `registry.events.<EventType>`.

`EventRelay` is a checkpointed subscriber on the projection worker machinery (its own
projection name, "relay"), so it resumes where it stopped and a replay of another projection
never republishes. Delivery is at least once: a batch's checkpoint commits only after every
event in it was published (and, on NATS JetStream, acknowledged by the server). The event id is
the message id (`Nats-Msg-Id` on NATS, so JetStream drops a republished duplicate within its
duplicate window; `message_id` on RabbitMQ; a `message_id` header on Redis and Kafka).

Payloads carry no secret and no personal data: secret fields (password hash, OAuth tokens)
read "[redacted]", personal ones (email, OAuth account id and email, the app's custom columns
marked personal) "[personal]". Messages stay on brokers and in subscribers' stores, out of
reach of an erasure; a subscriber that needs a user's personal data reads it from the read API
(`GET /users/{id}`), which forgets it when the user is erased. `UserErased` is published like
any event, so subscribers can erase their own copies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from events import Event, EventStore, RecordedEvent
from events.crypto import PROFILE_EVENTS
from registry.bus.brokers import Broker, broker_kind_of, is_nats, is_rabbit, is_redis
from registry.bus.channels import Channels
from registry.bus.nats_commands import declare_stream

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.

log = logging.getLogger("registry.bus.relay")

RELAY_NAME = "relay"
#: what a personal value reads as on the bus
PERSONAL = "[personal]"
DUPLICATE_WINDOW_SECONDS = 120.0


class PublishedEvent(BaseModel):
    """What the relay publishes for each event: the envelope, the metadata, and the payload
    with secrets replaced by "[redacted]" and personal values by "[personal]" (read those
    from the read API: `GET /users/{stream_id}`)."""

    event_id: UUID
    event_type: str
    schema_version: int
    stream_id: UUID
    stream_version: int
    position: int
    recorded_at: datetime
    metadata: dict[str, Any]
    data: dict[str, Any]


def _hide(value: object) -> object:
    return value if value is None or value == "[redacted]" else PERSONAL


def public_payload(event: Event, personal_profile: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`event`'s payload with secrets "[redacted]" and personal values "[personal]".
    `personal_profile`: the app's custom columns marked personal (hidden in `profile` /
    `changes` of the events that carry custom columns)."""
    cls = type(event)
    data = event.redacted()
    for name in cls.personal_fields:
        if name in data:
            data[name] = _hide(data[name])
    nested = cls.personal_dict
    keys = cls.personal_keys | (personal_profile if cls.event_type in PROFILE_EVENTS else set())
    if nested is not None and keys and isinstance(data.get(nested), dict):
        data[nested] = {k: (_hide(v) if k in keys else v) for k, v in data[nested].items()}
    return data


def event_message(
    recorded: RecordedEvent, personal_profile: frozenset[str] = frozenset()
) -> dict[str, Any]:
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
        data=public_payload(recorded.event, personal_profile),
    ).model_dump(mode="json")


class EventPublisher:
    """Publishes one event message on a connected broker, waiting for the broker's confirmation
    where it gives one (JetStream PubAck, RabbitMQ publisher confirm).

    `store`: the event store whose crypto names the app's personal custom columns
    (`Crypto.personal_profile`, read at each publish: the crypto may be attached later)."""

    def __init__(
        self, broker: Broker, channels: Channels | None = None, store: EventStore | None = None
    ) -> None:
        self.broker = broker
        self.channels = channels or Channels()
        self.kind = broker_kind_of(broker)
        self.store = store

    def personal_profile(self) -> frozenset[str]:
        crypto = self.store.crypto if self.store is not None else None
        return crypto.personal_profile if crypto is not None else frozenset()

    async def prepare(self) -> None:
        """Declare where events go (call once the broker is connected)."""
        ch = self.channels
        broker = self.broker
        if is_nats(broker):
            from nats.js.api import StreamConfig  # noqa: PLC0415 broker client, loaded on use

            await declare_stream(
                broker,
                StreamConfig(
                    name=ch.nats_event_stream,
                    subjects=[ch.event_wildcard],
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                ),
            )
        elif is_rabbit(broker):
            from faststream.rabbit import (  # noqa: PLC0415 broker client, loaded on use
                ExchangeType,
                RabbitExchange,
            )

            await broker.declare_exchange(
                RabbitExchange(ch.event_exchange, type=ExchangeType.TOPIC, durable=True)
            )

    async def publish(self, recorded: RecordedEvent) -> None:
        body = event_message(recorded, self.personal_profile())
        subject = self.channels.event(recorded.event_type)
        event_id = str(recorded.event_id)
        broker = self.broker
        if is_nats(broker):
            await broker.publish(
                body,
                subject,
                headers={"Nats-Msg-Id": event_id},
                correlation_id=event_id,
                stream=self.channels.nats_event_stream,
                timeout=5.0,
            )
        elif is_rabbit(broker):
            from faststream.rabbit import (  # noqa: PLC0415 broker client, loaded on use
                ExchangeType,
                RabbitExchange,
            )

            await broker.publish(
                body,
                routing_key=subject,
                exchange=RabbitExchange(
                    self.channels.event_exchange, type=ExchangeType.TOPIC, durable=True
                ),
                message_id=event_id,
                correlation_id=event_id,
                persist=True,
            )
        elif is_redis(broker):
            await broker.publish(
                body, stream=subject, headers={"message_id": event_id}, correlation_id=event_id
            )
        else:
            await broker.publish(
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

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        for recorded in batch:
            await self.publisher.publish(recorded)
            self.published += 1
        if batch:
            log.debug(
                "events relayed",
                extra={"count": len(batch), "last_position": batch[-1].position},
            )
