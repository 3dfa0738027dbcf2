"""The command line as a user runs it: `registry send` (exit 0 accepted, 3 rejected, 4 no
reply in time, 2 usage), `registry asyncapi`, and `registry consume` until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.bus import Channels
from tests.support.bus import (
    BROKER_URLS,
    FAKE_HASH,
    REGISTRY,
    BusClient,
    cleanup,
    cli,
    consumer,
    create_tables,
    event_count,
    make_container,
    register_payload,
    unique_prefix,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def nats_env(engine: AsyncEngine) -> AsyncIterator[tuple[dict[str, str], Any]]:
    await create_tables(engine)
    prefix = unique_prefix()
    env = {"REGISTRY_BROKER_URL": BROKER_URLS["nats"], "REGISTRY_BUS_PREFIX": prefix}
    container = make_container(engine, BROKER_URLS["nats"], prefix)
    try:
        yield env, container
    finally:
        await cleanup("nats", Channels(prefix))


@sqlite_only
async def test_send_prints_the_reply_and_exits_by_outcome(
    nats_env: tuple[dict[str, str], Any], engine: AsyncEngine
) -> None:
    env, container = nats_env
    async with consumer(container, "nats"):
        code, reply, _ = await cli("send", "register", json.dumps(register_payload()), env=env)
        assert code == 0, reply
        assert reply["status"] == "accepted"
        assert reply["version"] == 1
        assert reply["command_id"]  # added by `send`, so a retry is deduplicated

        code, again, _ = await cli(
            "send",
            "update",
            json.dumps({"user_id": str(uuid.uuid4()), "is_active": False}),
            env=env,
        )
        assert (code, again["code"]) == (3, "USER_NOT_FOUND")

        code, bad, _ = await cli("send", "delete", "{oops", env=env)
        assert (code, bad["code"]) == (3, "INVALID_COMMAND")

        code, _, err = await cli("send", "rename", "{}", env=env)
        assert code == 2
        assert "unknown command" in err
    assert await event_count(engine) == 1

    # nobody consuming any more: no reply in time
    code, _, err = await cli(
        "send", "register", json.dumps(register_payload()), "--timeout", "1", env=env
    )
    assert code == 4, err
    assert "no reply" in err


@sqlite_only
async def test_send_exits_non_zero_for_a_reused_key(
    nats_env: tuple[dict[str, str], Any],
    engine: AsyncEngine,
) -> None:
    """A command_id reused for another command: rejected, exit 3 (was: the first outcome
    as a duplicate, exit 0, the second command not done)."""
    env, container = nats_env
    async with consumer(container, "nats"):
        code, a, _ = await cli("send", "register", json.dumps(register_payload()), env=env)
        assert code == 0, a
        code, b, _ = await cli("send", "register", json.dumps(register_payload()), env=env)
        assert code == 0, b
        update = {"user_id": a["user_id"], "is_active": False, "command_id": "reuse-1"}
        code, first, _ = await cli("send", "update", json.dumps(update), env=env)
        assert code == 0, first
        erase = {"user_id": b["user_id"], "command_id": "reuse-1"}
        code, reply, _ = await cli("send", "erase", json.dumps(erase), env=env)
        assert (code, reply["status"], reply["code"]) == (3, "rejected", "IDEMPOTENCY_KEY_REUSED")
        code, again, _ = await cli("send", "update", json.dumps(update), env=env)
        assert (code, again["duplicate"]) == (0, True)
    assert await event_count(engine) == 3


async def test_send_without_a_broker_is_a_usage_error() -> None:
    code, _, err = await cli("send", "register", "{}", env={"REGISTRY_BROKER_URL": ""})
    assert code == 2
    assert "REGISTRY_BROKER_URL" in err


@pytest.mark.parametrize("url", [BROKER_URLS["nats"], BROKER_URLS["rabbit"], "kafka://k:9092"])
async def test_asyncapi_documents_every_channel(url: str, tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    code, _, err = await cli("asyncapi", "--output", str(out), env={"REGISTRY_BROKER_URL": url})
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["asyncapi"].startswith("3.")
    channels = {c["address"] for c in doc["channels"].values()}
    for name in ("register", "update", "delete", "erase", "link-oauth", "update-oauth"):
        assert f"registry.users.{name}" in channels
    assert {"registry.events.UserRegistered", "registry.events.UserErased"} <= channels
    schemas = doc["components"]["schemas"]
    assert "RegisterUser" in schemas
    assert "PublishedEvent" in schemas
    assert "role" not in schemas["RegisterUser"]["properties"]
    if url.startswith("kafka"):
        assert "registry.replies" in channels


@sqlite_only
async def test_consume_serves_until_sigterm(
    nats_env: tuple[dict[str, str], Any], engine: AsyncEngine, tmp_path: Path
) -> None:
    env, container = nats_env
    env = {
        **env,
        "REGISTRY_DATABASE_URL": container.settings.database_url,
        "REGISTRY_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "consume.log"
    log_file = log_path.open("wb")  # a file, not a pipe: a full pipe would block the process
    proc = await asyncio.create_subprocess_exec(
        REGISTRY,
        "consume",
        env={**os.environ, **env},
        stdout=log_file,
        stderr=log_file,
        cwd=tmp_path,
    )
    try:
        channels = Channels(env["REGISTRY_BUS_PREFIX"])

        async def subscribed() -> bool:
            assert proc.returncode is None, log_path.read_text()
            nc = await nats.connect(BROKER_URLS["nats"])
            try:
                js = nc.jetstream()
                await js.consumer_info(channels.nats_command_stream, channels.durable)
            # not subscribed yet, in whatever way NATS says so
            except Exception:  # noqa: BLE001
                return False
            finally:
                await nc.close()
            return True

        await eventually(subscribed, timeout=30, message="`registry consume` to subscribe")
        async with BusClient("nats", channels) as client:
            reply = await client.send("register", register_payload())
        assert reply is not None, reply
        assert reply.accepted, reply
        assert await event_count(engine) == 1
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            raise AssertionError(f"no exit after SIGTERM:\n{log_path.read_text()}") from None
        assert code == 0, log_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log_file.close()
    err = log_path.read_text()
    assert FAKE_HASH not in err
    assert "bus consumer started" in err
