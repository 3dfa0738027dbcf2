"""Every malformed input is answered once with INVALID_COMMAND (PAYLOAD_TOO_LARGE when too
large) and acknowledged, never redelivered, on real NATS, RabbitMQ and Redis: deep nesting,
invalid UTF-8, NUL bytes (raw or escaped, in any field), unpaired surrogates. Bad input that
only shows past parsing (a model refusing a value) is INVALID_COMMAND too; only a server fault
is INTERNAL_ERROR."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from events import UserRegistered
from registry.bootstrap import Container
from registry.bus import Channels, command_handlers, create_broker, running_bus
from registry.domain.commands import Command
from registry.service.handlers import Outcome
from tests.support.broker import held
from tests.support.bus import (
    BROKER_URLS,
    BusClient,
    cleanup,
    consumer,
    create_tables,
    event_count,
    make_container,
    register_payload,
    unique_prefix,
)
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.broker,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]
KINDS = ["nats", "rabbit", "redis"]
MAX_PAYLOAD = 96 * 1024


@pytest.fixture
async def setup(engine: AsyncEngine) -> AsyncIterator[tuple[Container, Channels]]:
    await create_tables(engine)
    channels = Channels(unique_prefix())
    try:
        yield (
            make_container(engine, "unused://", channels.prefix, max_payload=MAX_PAYLOAD),
            channels,
        )
    finally:
        for kind in KINDS:
            await cleanup(kind, channels)


def _nested(depth: int) -> bytes:
    """About 60 KB for 5,000 levels, as in the report."""
    inner = b"[" * depth + b"]" * depth
    body = b'{"email": "deep@example.com", "hashed_password": "x", "profile": {"p": ' + inner
    return body + b"}}"


def _with(**fields: object) -> bytes:
    return json.dumps({**register_payload(), **fields}).encode()


MALFORMED: list[tuple[str, str, bytes]] = [
    ("deep-5000", "register", _nested(5000) + b" " * (60 * 1024 - len(_nested(5000)))),
    ("deep-40", "register", _nested(40)),
    ("deep-in-id", "update", b'{"user_id": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("invalid-utf8", "register", b'{"email": "\xff\xfe@example.com", "hashed_password": "x"}'),
    ("raw-nul", "register", b'{"email": "a\x00b@example.com", "hashed_password": "x"}'),
    ("nul-email", "register", _with(email="nul\u0000@example.com")),
    ("nul-command-id", "register", _with(command_id="id-\u0000-1")),
    ("nul-actor", "register", _with(actor="ops\u0000")),
    ("nul-profile-key", "register", _with(profile={"a\u0000": 1})),
    ("lone-surrogate", "register", _with(actor="x\ud800y")),
    ("nul-oauth-name", "link-oauth", b""),  # filled in per test: needs a user id
    ("oversize", "register", b'{"email": "' + b"a" * (MAX_PAYLOAD + 10) + b'"}'),
]


def _oauth(user_id: str) -> bytes:
    return json.dumps(
        {
            "user_id": user_id,
            "oauth_name": "git\u0000hub",
            "access_token": "gho_token",
            "account_id": "1",
            "account_email": "a@example.com",
        }
    ).encode()


@pytest.mark.parametrize("kind", KINDS)
async def test_every_malformed_input_is_answered_once_and_acknowledged(
    kind: str,
    setup: tuple[Container, Channels],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    container, channels = setup
    caplog.set_level(logging.INFO)
    async with consumer(container, kind, ack_wait=15.0), BusClient(kind, channels) as client:
        user = await client.send("register", register_payload())
        assert user.accepted, user
        for label, name, body in MALFORMED:
            if label == "nul-oauth-name":
                body = _oauth(str(user.user_id))
            reply = await client.send(name, body)
            expected = "PAYLOAD_TOO_LARGE" if label == "oversize" else "INVALID_COMMAND"
            assert (label, reply.status, reply.code) == (label, "rejected", expected), reply
        ok = await client.send("register", register_payload())
        assert ok.accepted, ok
        if kind != "rabbit":  # RabbitMQ: read the queue once the consumer is gone

            async def settled() -> bool:
                state = await held(kind, channels)
                return state.waiting == 0 and not state.bodies

            await eventually(settled, timeout=15, message="every message acknowledged")
    state = await held(kind, channels)
    assert (state.waiting, state.bodies, state.redelivered) == (0, [], 0)
    assert await event_count(engine) == 2
    rejected = [r for r in caplog.records if r.getMessage() == "command rejected"]
    assert len(rejected) == len(MALFORMED)  # answered once each
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "gho_token" not in caplog.text


async def test_bad_input_found_past_parsing_is_invalid_command_not_internal_error(
    setup: tuple[Container, Channels], engine: AsyncEngine
) -> None:
    """A value the command model lets through but an event refuses (what an email longer
    than 320 characters once lower-cased did): INVALID_COMMAND, nothing appended."""
    container, channels = setup
    real = command_handlers(container).handle

    async def handle(command: Command) -> Outcome:
        if getattr(command, "email", "").startswith("refused"):
            UserRegistered.model_validate({"email": None})  # raises ValidationError
        if getattr(command, "email", "").startswith("fault"):
            raise RuntimeError("the disk is on fire")
        return await real(command)

    async with (
        running_bus(
            container,
            broker=create_broker(BROKER_URLS["nats"]),
            handle=handle,
            channels=channels,
            relay=False,
        ),
        BusClient("nats", channels) as client,
    ):
        refused = await client.send("register", register_payload("refused@example.com"))
        fault = await client.send("register", register_payload("fault@example.com"))
    assert (refused.code, fault.code) == ("INVALID_COMMAND", "INTERNAL_ERROR")
    assert "retry" not in (refused.message or "")
    assert "email" in (refused.message or "")
    assert "fire" not in (fault.message or "")
    assert await event_count(engine) == 0
    with pytest.raises(ValidationError):
        UserRegistered.model_validate({"email": None})
