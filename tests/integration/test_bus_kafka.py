"""Kafka: FastStream cannot do request/reply against a real Kafka, so the consumer publishes
every outcome to `<prefix>.replies` keyed by command id. No Kafka server runs on the test
machines, so this runs under FastStream's `TestKafkaBroker` (in memory): it checks the wiring
(channels, reply topic, key, typed reply), not Kafka's delivery guarantees."""

from __future__ import annotations

import json
import uuid

import pytest
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bus import Channels, CommandConsumer, Reply, command_handlers
from tests.support.bus import create_tables, event_count, make_container, register_payload

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_outcomes_go_to_the_replies_topic_keyed_by_command_id(engine: AsyncEngine) -> None:
    await create_tables(engine)
    channels = Channels(f"k{uuid.uuid4().hex[:8]}")
    container = make_container(engine, "kafka://localhost:9092", channels.prefix)
    broker = KafkaBroker("localhost:9092")
    CommandConsumer(broker, command_handlers(container).handle, channels=channels)
    got: list[tuple[bytes | None, Reply]] = []

    @broker.subscriber(channels.replies)
    async def on_reply(body: dict[str, object], message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple), "one record, not a batch"
        got.append((record.key, Reply.model_validate(body)))

    async with TestKafkaBroker(broker) as br:
        ok = register_payload(command_id="k-1")
        await br.publish(json.dumps(ok).encode(), channels.command("register"), key=b"k-1")
        await br.publish(
            json.dumps(ok).encode(), channels.command("register"), key=b"k-1"
        )  # same id again
        await br.publish(b"{broken", channels.command("update"))
        await br.publish(
            json.dumps({"user_id": str(uuid.uuid4()), "command_id": "k-2"}).encode(),
            channels.command("delete"),
        )
    keys = [k for k, _ in got]
    replies = [r for _, r in got]
    assert keys[:2] == [b"k-1", b"k-1"]
    assert [r.status for r in replies] == ["accepted", "accepted", "rejected", "rejected"]
    assert replies[1].duplicate
    assert replies[1].user_id == replies[0].user_id
    assert [r.code for r in replies[2:]] == ["INVALID_COMMAND", "USER_NOT_FOUND"]
    assert keys[3] == b"k-2"
    assert await event_count(engine) == 1
