"""Erasure over the bus (real NATS) and from the command line, on SQLite and PostgreSQL.

`registry.users.erase` erases a user and replies like any command; the relay publishes every
event, `UserErased` included, and no relayed message ever carries the user's email, password
hash, OAuth tokens or account ids (personal values read "[personal]", secrets "[redacted]").
`registry erase USER_ID` does the same from a shell.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events.crypto import Crypto, Keyring, MasterKey, attach
from registry.bootstrap import Container
from registry.bus import Channels
from registry.domain.commands import RegisterUser
from tests.support.bus import (
    BROKER_URLS,
    BusClient,
    NatsEvents,
    cleanup,
    cli,
    consumer,
    create_tables,
    event_count,
    make_container,
)
from tests.support.erasure import assert_nowhere, dump_every_table
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


@pytest.fixture
async def env(engine: AsyncEngine) -> AsyncIterator[tuple[Container, Channels]]:
    """Tables, the session's master key (the one `registry` subprocesses read from the
    environment) attached, and a bus prefix of this test's own."""
    await create_tables(engine)
    key = MasterKey.parse(os.environ["REGISTRY_MASTER_KEY"])
    attach(engine, Crypto(Keyring(key), personal_profile={"nickname"}))
    channels = Channels(f"er{uuid.uuid4().hex[:10]}")
    try:
        yield make_container(engine, BROKER_URLS["nats"], channels.prefix), channels
    finally:
        attach(engine, None)
        await cleanup("nats", channels)


async def life_over_the_bus(bus: BusClient, tag: str) -> tuple[str, list[str]]:
    """Register, change email and password, link and update an OAuth account, all as bus
    commands; the user id and their personal values."""
    needles = [
        f"first.{tag}@example.com",
        f"second.{tag}@example.com",
        f"$argon2id$v=19$m=65536,t=3,p=4$one-{tag}",
        f"$argon2id$v=19$m=65536,t=3,p=4$two-{tag}",
        f"Nick {tag}",
        f"gho_access_{tag}",
        f"ghr_refresh_{tag}",
        f"ya29_new_{tag}",
        f"gh-id-{tag}",
        f"oauth.{tag}@example.net",
    ]
    reg = await bus.send(
        "register",
        {"email": needles[0], "hashed_password": needles[2], "profile": {"nickname": needles[4]}},
    )
    assert reg.accepted, reg
    uid = str(reg.user_id)
    account = str(uuid.uuid4())
    for name, payload in (
        ("update", {"email": needles[1], "hashed_password": needles[3]}),
        (
            "link-oauth",
            {
                "oauth_account_id": account,
                "oauth_name": "github",
                "access_token": needles[5],
                "refresh_token": needles[6],
                "account_id": needles[8],
                "account_email": needles[9],
            },
        ),
        ("update-oauth", {"oauth_account_id": account, "access_token": needles[7]}),
    ):
        reply = await bus.send(name, {"user_id": uid, **payload})
        assert reply.accepted, reply
    return uid, needles


async def test_erase_over_the_bus_and_nothing_personal_is_ever_relayed(
    env: tuple[Container, Channels],
) -> None:
    container, channels = env
    reader = NatsEvents(channels)
    async with consumer(container, "nats", relay=True), BusClient("nats", channels) as bus:
        uid, needles = await life_over_the_bus(bus, "victim")
        other, other_needles = await life_over_the_bus(bus, "other")

        erased = await bus.send("erase", {"user_id": uid, "command_id": f"erase-{uid}"})
        assert erased.accepted, erased
        assert erased.version == 6, erased
        assert not erased.duplicate, erased
        total = await event_count(container.engine)
        again = await bus.send("erase", {"user_id": uid})
        assert again.accepted, again
        assert again.version == 6, again
        assert await event_count(container.engine) == total  # nothing appended
        unknown = await bus.send("erase", {"user_id": str(uuid.uuid4())})
        assert unknown.status == "rejected", unknown
        assert unknown.code == "USER_NOT_FOUND", unknown
        refused = await bus.send("update", {"user_id": uid, "is_verified": True})
        assert refused.code == "USER_NOT_FOUND"
        assert "erased" in (refused.message or "")

        async def relayed() -> bool:
            return await reader.count() >= total

        await eventually(relayed, timeout=15, message="the relay to publish every event")

    messages = await reader.read_all()
    assert len(messages) == total
    bodies = [json.loads(m.data) for m in messages]
    assert [b["event_type"] for b in bodies if b["stream_id"] == uid][-1] == "UserErased"
    raw = "\n".join(m.data.decode() for m in messages)
    for needle in needles + other_needles:  # nobody's personal data leaves, erased or not
        assert needle.lower() not in raw.lower(), needle
    first = next(b for b in bodies if b["event_type"] == "UserRegistered")
    assert first["data"]["email"] == "[personal]"
    assert first["data"]["hashed_password"] == "[redacted]"
    assert first["data"]["profile"] == {"nickname": "[personal]"}
    linked = next(b for b in bodies if b["event_type"] == "OAuthAccountLinked")
    assert (linked["data"]["account_id"], linked["data"]["access_token"]) == (
        "[personal]",
        "[redacted]",
    )

    # every table after the bus run (processed commands, relay checkpoint included)
    assert_nowhere(await dump_every_table(container.engine), needles)
    with pytest.raises(AssertionError, match="still in table"):  # the scan can fail
        assert_nowhere(await dump_every_table(container.engine), other_needles)
    assert other


async def test_registry_erase_from_the_command_line(
    env: tuple[Container, Channels], database_url: str
) -> None:
    container, _ = env
    handle = container.handlers().handle
    user = await handle(RegisterUser(email="cli.victim@example.com", hashed_password="$h$cli"))
    uid = str(user.user_id)
    shell = {"REGISTRY_DATABASE_URL": database_url}

    async def run(*args: str, stdin: str | None = None) -> tuple[int, Any, str]:
        return await cli("erase", *args, env=shell, stdin=stdin)

    code, _, err = await run(uid, stdin="n\n")  # asks first; "no" changes nothing
    assert code != 0
    assert "Erase every piece of personal data" in err
    assert await event_count(container.engine) == 1

    code, out, err = await run(uid, "--yes", "--json")
    assert code == 0, err
    assert out == {"status": "erased", "user_id": uid, "version": 2}
    code, out, err = await run(uid, "--yes", "--json")
    assert (code, out["status"], out["version"]) == (0, "already_erased", 2), err
    code, out, _ = await run(uid, "--yes")
    assert code == 0
    assert "already erased" in out

    missing = str(uuid.uuid4())
    code, out, _ = await run(missing, "--yes", "--json")
    assert code == 3
    assert out["code"] == "USER_NOT_FOUND"
    code, _, err = await run(missing, "--yes")
    assert code == 3
    assert f"user {missing} does not exist" in err
    code, _, err = await run("not-a-uuid", "--yes")
    assert code == 2
    assert "not a user id" in err

    assert await event_count(container.engine) == 2
    assert_nowhere(await dump_every_table(container.engine), ["cli.victim@example.com", "$h$cli"])
    again = await handle(RegisterUser(email="CLI.victim@example.com", hashed_password="h"))
    assert again.user_id != user.user_id


async def test_registry_erase_with_confirmation_typed_yes(
    env: tuple[Container, Channels], database_url: str
) -> None:
    container, _ = env
    user = await container.handlers().handle(
        RegisterUser(email="typed.yes@example.com", hashed_password="h")
    )
    code, out, err = await cli(
        "erase", str(user.user_id), env={"REGISTRY_DATABASE_URL": database_url}, stdin="y\n"
    )
    assert code == 0, err
    assert f"user {user.user_id} erased (stream version 2)" in out
