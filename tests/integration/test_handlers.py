"""Command handlers on SQLite and PostgreSQL: one transaction, uniqueness, idempotency, retries."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, UserRegistered
from events.tables import metadata as events_metadata
from registry.domain.commands import (
    DeleteUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateUser,
)
from registry.errors import (
    EmailAlreadyRegisteredError,
    InvalidCommandError,
    OAuthAccountAlreadyLinkedError,
    UserAlreadyExistsError,
    UserNotFoundError,
    VersionConflictError,
)
from registry.service.handlers import CommandHandlers
from registry.tables import email_reservations, oauth_reservations
from registry.tables import metadata as registry_metadata
from tests.support.store import count_events


class FastHasher:
    """Stands in for Argon2 where the hash itself is not under test (keeps tests quick)."""

    def hash(self, password: str) -> str:
        return "fake$" + password[::-1]


@pytest.fixture
async def handlers(engine: AsyncEngine) -> CommandHandlers:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
    return CommandHandlers(
        engine,
        EventStore(engine),
        profile_fields=frozenset({"first_name"}),
        password_helper=FastHasher(),
    )


async def register(h: CommandHandlers, email: str = "ann@example.com", **kw: object) -> uuid.UUID:
    out = await h.handle(RegisterUser.model_validate({"email": email, "password": "pw", **kw}))
    return out.user_id


async def test_register_hashes_with_argon2_by_default(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
    h = CommandHandlers(engine, EventStore(engine))
    out = await h.handle(RegisterUser(email="a@x.io", password=SecretStr("s3cret-pw")))
    (rec,) = out.events
    assert isinstance(rec.event, UserRegistered)
    assert rec.event.hashed_password.startswith("$argon2")
    assert "s3cret-pw" not in str(rec.event.model_dump())


async def test_update_emits_fine_grained_events(handlers: CommandHandlers) -> None:
    uid = await register(handlers)
    out = await handlers.handle(
        UpdateUser(user_id=uid, email="bo@example.com", password=SecretStr("new"))
    )
    assert [e.event_type for e in out.events] == ["UserEmailChanged", "UserPasswordChanged"]
    assert out.version == 3
    noop = await handlers.handle(UpdateUser(user_id=uid, email="bo@example.com"))
    assert noop.events == ()
    assert noop.version == 3


async def test_unknown_profile_key_is_refused_and_nothing_appended(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    with pytest.raises(InvalidCommandError, match="nickname"):
        await handlers.handle(
            RegisterUser(email="a@x.io", password=SecretStr("p"), profile={"nickname": 1})
        )
    uid = await register(handlers)
    with pytest.raises(InvalidCommandError):
        await handlers.handle(UpdateUser(user_id=uid, profile={"nickname": "x"}))
    assert await count_events(engine) == 1


async def test_unknown_and_deleted_users_are_refused(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    with pytest.raises(UserNotFoundError):
        await handlers.handle(UpdateUser(user_id=uuid.uuid4(), is_active=False))
    uid = await register(handlers)
    await handlers.handle(DeleteUser(user_id=uid))
    with pytest.raises(UserNotFoundError):
        await handlers.handle(DeleteUser(user_id=uid))
    assert await count_events(engine) == 2


async def test_email_is_unique_case_insensitively_moved_and_released(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    uid = await register(handlers, "Ann@Example.com")
    with pytest.raises(EmailAlreadyRegisteredError):
        await register(handlers, "  ann@EXAMPLE.COM ")
    other = await register(handlers, "bob@example.com")
    with pytest.raises(EmailAlreadyRegisteredError):
        await handlers.handle(UpdateUser(user_id=other, email="ANN@example.com"))
    await handlers.handle(UpdateUser(user_id=uid, email="ann2@example.com"))
    await register(handlers, "ann@example.com")  # the old address is free again
    await handlers.handle(DeleteUser(user_id=other))
    await register(handlers, "BOB@example.com")  # released on delete
    async with engine.connect() as conn:
        rows = sorted((await conn.execute(select(email_reservations.c.email))).scalars())
    assert rows == ["ann2@example.com", "ann@example.com", "bob@example.com"]
    assert await count_events(engine, "UserRegistered") == 4


async def test_fifty_concurrent_registrations_of_one_address(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    emails = [("race@example.com" if i % 2 else "Race@Example.COM") for i in range(50)]
    results = await asyncio.gather(*(register(handlers, e) for e in emails), return_exceptions=True)
    winners = [r for r in results if isinstance(r, uuid.UUID)]
    losers = [r for r in results if isinstance(r, EmailAlreadyRegisteredError)]
    assert len(winners) == 1, results
    assert len(losers) == 49, results
    assert await count_events(engine, "UserRegistered") == 1


async def test_twenty_concurrent_updates_lose_nothing(handlers: CommandHandlers) -> None:
    uid = await register(handlers)
    outs = await asyncio.gather(
        *(
            handlers.handle(UpdateUser(user_id=uid, profile={"first_name": f"n{i}"}))
            for i in range(20)
        )
    )
    assert sorted(o.version for o in outs) == list(range(2, 22))
    stream = await handlers.store.read_stream(uid)
    assert [e.stream_version for e in stream] == list(range(1, 22))
    assert len([e for e in stream if e.event_type == "UserProfileUpdated"]) == 20


async def test_expected_version_conflict(handlers: CommandHandlers, engine: AsyncEngine) -> None:
    uid = await register(handlers)
    await handlers.handle(UpdateUser(user_id=uid, is_verified=True, expected_version=1))
    with pytest.raises(VersionConflictError):
        await handlers.handle(UpdateUser(user_id=uid, is_active=False, expected_version=1))
    assert await count_events(engine) == 2


async def test_command_id_dedup_sequential(handlers: CommandHandlers, engine: AsyncEngine) -> None:
    cmd = RegisterUser(email="a@x.io", hashed_password="h", command_id="c-1")
    first = await handlers.handle(cmd)
    again = await handlers.handle(cmd)
    assert not first.duplicate
    assert again.duplicate
    assert (again.user_id, again.version) == (first.user_id, first.version)
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    upd = UpdateUser(user_id=first.user_id, is_verified=True, command_id="c-2")
    await handlers.handle(upd)
    await handlers.handle(UpdateUser(user_id=first.user_id, is_verified=False))
    replay = await handlers.handle(upd)  # not re-applied although it would change things now
    assert replay.duplicate
    assert replay.version == 2
    assert await count_events(engine) == 3


async def test_command_id_dedup_concurrent(handlers: CommandHandlers, engine: AsyncEngine) -> None:
    cmd = RegisterUser(email="a@x.io", hashed_password="h", command_id="same")
    outs = await asyncio.gather(*(handlers.handle(cmd) for _ in range(10)))
    assert len({o.user_id for o in outs}) == 1
    assert sum(not o.duplicate for o in outs) == 1
    uid = outs[0].user_id
    upd = UpdateUser(user_id=uid, profile={"first_name": "x"}, command_id="upd")
    outs2 = await asyncio.gather(*(handlers.handle(upd) for _ in range(10)))
    assert {o.version for o in outs2} == {2}
    assert await count_events(engine) == 2


async def test_oauth_accounts_unique_and_released_on_delete(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    a, b = await register(handlers, "a@x.io"), await register(handlers, "b@x.io")

    def link(uid: uuid.UUID) -> LinkOAuthAccount:
        return LinkOAuthAccount(
            user_id=uid,
            oauth_name="google",
            access_token=SecretStr("tok"),
            account_id="g1",
            account_email="a@x.io",
        )

    await handlers.handle(link(a))
    with pytest.raises(OAuthAccountAlreadyLinkedError):
        await handlers.handle(link(b))
    await handlers.handle(DeleteUser(user_id=a))
    await handlers.handle(link(b))
    async with engine.connect() as conn:
        owners = (await conn.execute(select(oauth_reservations.c.user_id))).scalars().all()
    assert owners == [b]


async def test_secrets_never_logged(
    handlers: CommandHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    uid = await register(handlers, password="plain-SECRET-1")
    await handlers.handle(UpdateUser(user_id=uid, password=SecretStr("plain-SECRET-2")))
    await handlers.handle(
        LinkOAuthAccount(
            user_id=uid,
            oauth_name="gh",
            access_token=SecretStr("tok-SECRET"),
            refresh_token=SecretStr("ref-SECRET"),
            account_id="1",
            account_email="a@x.io",
        )
    )
    with pytest.raises(InvalidCommandError):
        await handlers.handle(
            UpdateUser(user_id=uid, password=SecretStr("plain-SECRET-3"), profile={"x": 1})
        )
    # aiosqlite's own DEBUG logger prints SQL parameters: a driver's debug trace, not ours
    ours = [r for r in caplog.records if not r.name.startswith("aiosqlite")]
    assert any(r.name == "registry.service.handlers" for r in ours)
    text = " ".join(r.getMessage() + str(r.exc_text or "") for r in ours)
    assert "SECRET" not in text
    assert "fake$" not in text


async def test_register_on_a_taken_id_is_refused(
    handlers: CommandHandlers, engine: AsyncEngine
) -> None:
    uid = await register(handlers, "a@x.io")
    with pytest.raises(UserAlreadyExistsError):
        await handlers.handle(RegisterUser(user_id=uid, email="b@x.io", hashed_password="h"))
    await handlers.handle(DeleteUser(user_id=uid))
    with pytest.raises(UserAlreadyExistsError):  # a deleted user's id stays taken
        await handlers.handle(RegisterUser(user_id=uid, email="b@x.io", hashed_password="h"))
    assert await count_events(engine) == 2
