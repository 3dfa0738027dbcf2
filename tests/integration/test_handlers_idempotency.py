"""Idempotency keys bound to their command, on SQLite and PostgreSQL, with and without a master
key: the same command_id with the same command returns the first outcome; with another kind or
other content it is refused (IDEMPOTENCY_KEY_REUSED) and does nothing."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from events.crypto import Crypto, Keyring, MasterKey
from events.tables import metadata as events_metadata
from registry.domain.commands import EraseUser, RegisterUser, UpdateUser
from registry.errors import IdempotencyKeyReusedError
from registry.service.handlers import CommandHandlers
from registry.tables import email_reservations, processed_commands
from registry.tables import metadata as registry_metadata
from tests.support.store import count_events


class SaltedHasher:
    """Like Argon2 for what matters here: a new random salt each time, so the same password
    hashes differently on every delivery."""

    def hash(self, password: str) -> str:
        return f"salted${secrets.token_hex(8)}${password[::-1]}"


@pytest.fixture(params=["keyed", "unkeyed"])
async def handlers(request: pytest.FixtureRequest, engine: AsyncEngine) -> CommandHandlers:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
    crypto = Crypto(Keyring(MasterKey.generate())) if request.param == "keyed" else None
    return CommandHandlers(
        engine,
        EventStore(engine, crypto=crypto),
        profile_fields=frozenset({"first_name"}),
        password_helper=SaltedHasher(),
    )


async def register(h: CommandHandlers, email: str, **kw: object) -> uuid.UUID:
    out = await h.handle(RegisterUser.model_validate({"email": email, "password": "pw", **kw}))
    return out.user_id


async def stored_fingerprint(engine: AsyncEngine, command_id: str) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(
            select(processed_commands.c.fingerprint).where(
                processed_commands.c.command_id == command_id
            )
        )


async def test_a_key_reused_for_another_command_is_refused_and_does_nothing(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    """The reported case: `update` of A with `reuse-1`, then `erase` of B with `reuse-1` was
    answered as a duplicate of the update (B not erased)."""
    a, b = await register(handlers, "a@x.io"), await register(handlers, "b@x.io")
    await handlers.handle(UpdateUser(user_id=a, is_verified=True, command_id="reuse-1"))
    before = await count_events(engine)
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await handlers.handle(EraseUser(user_id=b, command_id="reuse-1"))
    assert caught.value.code == "IDEMPOTENCY_KEY_REUSED"
    assert "reuse-1" in caught.value.message
    assert await count_events(engine) == before
    assert [e.event_type for e in await handlers.store.read_stream(b)] == ["UserRegistered"]
    async with engine.connect() as conn:
        taken = (await conn.execute(select(email_reservations.c.user_id))).scalars().all()
    assert b in taken  # B's address is still reserved: nothing of the erase happened
    # the key still answers its own command with the first outcome
    again = await handlers.handle(UpdateUser(user_id=a, is_verified=True, command_id="reuse-1"))
    assert again.duplicate
    assert again.version == 2


async def test_same_kind_other_content_is_refused(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    a = await register(handlers, "a@x.io", command_id="reg-a")
    with pytest.raises(IdempotencyKeyReusedError):
        await register(handlers, "c@x.io", command_id="reg-a")
    first = await handlers.handle(
        UpdateUser(user_id=a, profile={"first_name": "x"}, command_id="u")
    )
    with pytest.raises(IdempotencyKeyReusedError):
        await handlers.handle(UpdateUser(user_id=a, profile={"first_name": "y"}, command_id="u"))
    with pytest.raises(IdempotencyKeyReusedError):  # another user, same change
        await handlers.handle(
            UpdateUser(user_id=uuid.uuid4(), profile={"first_name": "x"}, command_id="u")
        )
    again = await handlers.handle(
        UpdateUser(user_id=a, profile={"first_name": "x"}, command_id="u")
    )
    assert again.duplicate
    assert (again.user_id, again.version) == (first.user_id, first.version)
    assert await count_events(engine) == 2


async def test_a_redelivered_password_is_the_same_command(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    """The password is hashed with a random salt: the fingerprint is taken before that, and
    holds neither the password nor a plain hash of it."""
    reg = RegisterUser(email="a@x.io", password=SecretStr("pw-SECRET"), command_id="r")
    first = await handlers.handle(reg)
    again = await handlers.handle(
        RegisterUser(email="a@x.io", password=SecretStr("pw-SECRET"), command_id="r")
    )
    assert again.duplicate
    assert again.user_id == first.user_id
    upd = UpdateUser(user_id=first.user_id, password=SecretStr("new-SECRET"), command_id="p")
    await handlers.handle(upd)
    assert (await handlers.handle(upd)).duplicate
    other = UpdateUser(user_id=first.user_id, password=SecretStr("other-SECRET"), command_id="p")
    if handlers.store.crypto is not None:
        with pytest.raises(IdempotencyKeyReusedError):
            await handlers.handle(other)
    else:  # no master key: nothing derived from a password is stored, only that one was given
        assert (await handlers.handle(other)).duplicate
    assert await count_events(engine) == 2
    for command_id, password in (("r", "pw-SECRET"), ("p", "new-SECRET")):
        stored = await stored_fingerprint(engine, command_id)
        assert stored is not None
        assert password not in stored
        assert hashlib.sha256(password.encode()).hexdigest() not in stored
        if handlers.store.crypto is not None:
            key_id = handlers.store.crypto.keyring.active.key_id
            assert stored.startswith(f"h1:{key_id}:")


async def test_delivery_metadata_is_not_content(handlers: CommandHandlers) -> None:
    a = await register(handlers, "a@x.io")
    first = await handlers.handle(
        UpdateUser(user_id=a, is_active=False, command_id="m", correlation_id="c1")
    )
    again = await handlers.handle(
        UpdateUser(
            user_id=a, is_active=False, command_id="m", correlation_id="c2", causation_id="x"
        )
    )
    assert again.duplicate
    assert again.version == first.version


async def test_records_made_before_fingerprints_compare_the_kind(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    a = await register(handlers, "a@x.io")
    await handlers.handle(UpdateUser(user_id=a, is_verified=True, command_id="old"))
    async with engine.begin() as conn:  # what migration 0005 leaves on older rows
        await conn.execute(update(processed_commands).values(fingerprint=None))
    again = await handlers.handle(UpdateUser(user_id=a, is_superuser=True, command_id="old"))
    assert again.duplicate
    assert again.version == 2
    with pytest.raises(IdempotencyKeyReusedError):
        await handlers.handle(EraseUser(user_id=a, command_id="old"))
    assert await count_events(engine) == 2


async def test_concurrent_reuse_has_one_effect(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    a = await register(handlers, "a@x.io")
    commands = [
        UpdateUser(user_id=a, profile={"first_name": f"n{i % 2}"}, command_id="race")
        for i in range(10)
    ]
    results = await asyncio.gather(*(handlers.handle(c) for c in commands), return_exceptions=True)
    applied = [r for r in results if not isinstance(r, BaseException) and not r.duplicate]
    assert len(applied) == 1, results
    winner = applied[0].events[0].event.model_dump()["changes"]["first_name"]
    for command, result in zip(commands, results, strict=True):
        if command.profile["first_name"] == winner:
            assert not isinstance(result, BaseException), result
            assert result.version == 2, result
        else:
            assert isinstance(result, IdempotencyKeyReusedError), result
    assert await count_events(engine) == 2


async def test_erasure_clears_the_fingerprints_of_the_users_commands(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    a = await register(handlers, "a@x.io", command_id="reg")
    b = await register(handlers, "b@x.io", command_id="reg-b")
    await handlers.handle(EraseUser(user_id=a, command_id="erase"))
    assert await stored_fingerprint(engine, "reg") is None  # may have covered the email
    assert await stored_fingerprint(engine, "erase") is not None
    assert await stored_fingerprint(engine, "reg-b") is not None
    with pytest.raises(IdempotencyKeyReusedError):  # the kind still binds
        await handlers.handle(UpdateUser(user_id=b, is_active=False, command_id="reg"))
