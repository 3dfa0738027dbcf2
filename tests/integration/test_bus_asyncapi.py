"""The AsyncAPI document against the consumer it documents, on every broker kind: each command
the consumer reads is documented on its own channel with its command model as payload, where
the consumer reads it, and the document claims no command channel the consumer does not read.

The consumed side is read from the live consumer, not from the declaration both are built
from: the FastStream subscribers on the consumer's broker (RabbitMQ, Redis, Kafka; nothing is
connected) and, on NATS, whose commands come through the consumer's own JetStream pull loop,
the durable consumers it creates on the server."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import nats
import pytest
from pydantic import BaseModel

from registry.bus import Channels, CommandConsumer, create_broker
from registry.bus.asyncapi import asyncapi_document
from registry.domain.commands import COMMANDS, Command
from tests.support.bus import BROKER_URLS, cleanup, unique_prefix

pytestmark = [pytest.mark.broker]

URLS = {**BROKER_URLS, "kafka": "kafka://localhost:9092"}


async def never_called(_command: Command) -> NoReturn:
    raise AssertionError("the consumer under inspection ran a command")


def matches(pattern: str, address: str) -> bool:
    """NATS subject filter / AMQP topic binding: `*` is one dot-separated token, `>` (NATS)
    and `#` (AMQP) any tail."""
    want, got = pattern.split("."), address.split(".")
    for i, token in enumerate(want):
        if token in (">", "#"):
            return True
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


def commands_matching(prefix: str, patterns: list[str]) -> set[str]:
    """The channels (`<prefix>.users.<command>`, the bus contract) of the commands the
    consumer can run that a reader of `patterns` receives."""
    return {
        address
        for name in COMMANDS
        if any(matches(p, address := f"{prefix}.users.{name}") for p in patterns)
    }


async def consumed_on_nats(prefix: str) -> tuple[set[str], dict[str, Any]]:
    """Start the consumer on the real server and read back the filter subjects of the durable
    consumers it made on streams over the prefix's subjects."""

    broker = create_broker(URLS["nats"])
    consumer = CommandConsumer(broker, never_called, channels=Channels(prefix))
    await consumer.start()
    filters: list[str] = []
    try:
        nc = await nats.connect(URLS["nats"])
        try:
            js = nc.jetstream()
            for stream in await js.streams_info():
                name, subjects = stream.config.name, stream.config.subjects or []
                if name is None or not any(s.startswith(f"{prefix}.") for s in subjects):
                    continue
                for info in await js.consumers_info(name):
                    config = info.config
                    filters += config.filter_subjects or [config.filter_subject or ">"]
        finally:
            await nc.close()
    finally:
        await consumer.stop()
    assert filters, "the consumer made no durable consumer"
    return commands_matching(prefix, filters), {}


def consumed_by_subscribers(kind: str, prefix: str) -> tuple[set[str], dict[str, Any]]:
    """The consumer's FastStream subscribers: what each reads, and where (the queue and
    exchange on RabbitMQ, the consumer group on Redis)."""
    broker = create_broker(URLS[kind])
    CommandConsumer(broker, never_called, channels=Channels(prefix))
    subscribers = broker.subscribers
    assert subscribers, "the consumer opened no subscriber"
    if kind == "rabbit":
        (sub,) = subscribers
        where = {"queue": sub.queue.name, "exchange": sub.exchange.name}
        return commands_matching(prefix, [sub.queue.routing_key]), where
    if kind == "redis":
        groups = {sub.stream_sub.group for sub in subscribers}
        (group,) = groups
        return {sub.stream_sub.name for sub in subscribers}, {"group": group}
    return {topic.name for sub in subscribers for topic in sub.topics}, {}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s (JSON pointers into `doc`) to the object they name."""
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def documented(doc: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each channel the registry receives on: its address → (the channel, its messages'
    payload schemas)."""
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for operation in doc["operations"].values():
        if operation["action"] != "receive":
            continue
        channel = resolve(doc, operation["channel"])
        payloads = [resolve(doc, resolve(doc, m)["payload"]) for m in operation["messages"]]
        out[channel["address"]] = (channel, payloads)
    return out


def model_of(prefix: str, address: str) -> type[BaseModel]:
    head = f"{prefix}.users."
    assert address.startswith(head), address
    return COMMANDS[address[len(head) :]]


@pytest.mark.parametrize("kind", ["nats", "rabbit", "redis", "kafka"])
async def test_every_consumed_command_is_documented_as_consumed(kind: str) -> None:
    prefix = unique_prefix()
    if kind == "nats":
        try:
            consumed, where = await consumed_on_nats(prefix)
        finally:
            await cleanup("nats", Channels(prefix))
    else:
        consumed, where = consumed_by_subscribers(kind, prefix)
    doc = json.loads(asyncapi_document(URLS[kind], channels=Channels(prefix)))
    channels = documented(doc)

    assert consumed == {f"{prefix}.users.{name}" for name in COMMANDS}
    assert set(channels) == consumed  # nothing consumed undocumented, nothing extra
    for address, (channel, payloads) in channels.items():
        model = model_of(prefix, address)
        bindings = channel["bindings"]
        (payload,) = payloads
        assert payload["title"] == model.__name__, address
        assert payload["properties"] == model.model_json_schema()["properties"], address
        if kind == "rabbit":
            assert bindings["amqp"]["queue"]["name"] == where["queue"], address
            assert f"exchange `{where['exchange']}`" in channel["description"], address
        elif kind == "redis":
            assert bindings["redis"]["channel"] == address
            assert bindings["redis"]["groupName"] == where["group"], address
        elif kind == "kafka":
            assert bindings["kafka"]["topic"] == address
        else:
            assert bindings["nats"]["subject"] == address
