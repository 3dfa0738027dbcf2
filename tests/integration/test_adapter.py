"""EventSourcedUserDatabase conformance, modelled on fastapi-users-db-sqlalchemy's own suite
(queries, existing email, custom fields, OAuth accounts), on SQLite and PostgreSQL, with the
projector running in-process (`run_projector`) as an app's lifespan would."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi_users.exceptions import UserAlreadyExists
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from events.tables import events
from registry import EventSourcedUserDatabase, run_projector
from registry.errors import InvalidCommandError
from registry.settings import Settings
from tests.support.adapter import OAUTH, OAuthAccount, User, UserDatabase

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(engine: AsyncEngine, database_url: str) -> AsyncIterator[Sessions]:
    settings = Settings(database_url=database_url)
    async with run_projector(engine, User, OAuthAccount, settings=settings):
        yield async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def db(sessions: Sessions) -> AsyncIterator[EventSourcedUserDatabase[Any, Any]]:
    async with sessions() as session:
        yield EventSourcedUserDatabase(session, User, OAuthAccount)


async def count_events(engine: AsyncEngine, event_type: str) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(events).where(events.c.event_type == event_type)
        return int(await conn.scalar(stmt) or 0)


async def test_queries(db: EventSourcedUserDatabase[Any, Any]) -> None:
    user = await db.create({"email": "lancelot@camelot.bt", "hashed_password": "guinevere"})
    assert isinstance(user.id, uuid.UUID)
    assert (user.is_active, user.is_superuser, user.is_verified) == (True, False, False)
    assert user.email == "lancelot@camelot.bt"

    updated = await db.update(user, {"is_superuser": True})
    assert updated.is_superuser is True

    got = await db.get(user.id)
    assert got is not None
    assert got.id == user.id
    assert got.is_superuser is True

    for email in ("lancelot@camelot.bt", "Lancelot@Camelot.BT", " LANCELOT@camelot.bt "):
        by_email = await db.get_by_email(email)
        assert by_email is not None
        assert by_email.id == user.id
    assert await db.get_by_email("galahad@camelot.bt") is None

    await db.delete(user)
    assert await db.get(user.id) is None
    assert await db.get(uuid.uuid4()) is None


async def test_create_honours_given_id_and_flags(db: EventSourcedUserDatabase[Any, Any]) -> None:
    uid = uuid.uuid4()
    user = await db.create(
        {"id": uid, "email": "a@x.io", "hashed_password": "h", "is_verified": True}
    )
    assert user.id == uid
    assert user.is_verified is True
    assert user.version == 1


async def test_insert_existing_email_any_case(
    db: EventSourcedUserDatabase[Any, Any], engine: AsyncEngine
) -> None:
    await db.create({"email": "lancelot@camelot.bt", "hashed_password": "guinevere"})
    with pytest.raises(UserAlreadyExists):
        await db.create({"email": "LANCELOT@camelot.bt", "hashed_password": "x"})
    other = await db.create({"email": "galahad@camelot.bt", "hashed_password": "x"})
    with pytest.raises(UserAlreadyExists):
        await db.update(other, {"email": "Lancelot@Camelot.bt"})
    assert await count_events(engine, "UserRegistered") == 2


async def test_concurrent_creates_of_one_address(sessions: Sessions, engine: AsyncEngine) -> None:
    async def create(i: int) -> User:
        async with sessions() as session:
            db = UserDatabase(session, User, OAuthAccount)
            email = "race@camelot.bt" if i % 2 else "RACE@Camelot.BT"
            created: User = await db.create({"email": email, "hashed_password": "h"})
            return created

    results = await asyncio.gather(*(create(i) for i in range(50)), return_exceptions=True)
    assert sum(isinstance(r, User) for r in results) == 1, results
    assert sum(isinstance(r, UserAlreadyExists) for r in results) == 49
    assert await count_events(engine, "UserRegistered") == 1


async def test_custom_fields(db: EventSourcedUserDatabase[Any, Any]) -> None:
    user = await db.create(
        {"email": "lancelot@camelot.bt", "hashed_password": "guinevere", "first_name": "Lancelot"}
    )
    assert user.first_name == "Lancelot"
    updated = await db.update(user, {"first_name": "Sir Lancelot"})
    assert updated.first_name == "Sir Lancelot"
    got = await db.get(user.id)
    assert got is not None
    assert got.first_name == "Sir Lancelot"


async def test_unknown_key_refused_nothing_appended(
    db: EventSourcedUserDatabase[Any, Any], engine: AsyncEngine
) -> None:
    with pytest.raises(InvalidCommandError, match="nickname"):
        await db.create({"email": "a@x.io", "hashed_password": "h", "nickname": "x"})
    user = await db.create({"email": "a@x.io", "hashed_password": "h"})
    for bad in ({"nickname": "x"}, {"version": 9}, {"is_verified": True, "oauth_accounts": []}):
        with pytest.raises(InvalidCommandError):
            await db.update(user, bad)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(events)) == 1


async def test_update_patch_dict_semantics(db: EventSourcedUserDatabase[Any, Any]) -> None:
    user = await db.create({"email": "a@x.io", "hashed_password": "h"})
    # what a PATCH through FastAPI Users may pass: None means "not given"
    same = await db.update(user, {"email": None, "password": None, "is_verified": None})
    assert same.version == 1
    assert same.email == "a@x.io"
    changed = await db.update(user, {"email": "b@x.io", "password": "new-plain"})
    assert changed.email == "b@x.io"
    assert changed.version == 3
    assert changed.hashed_password.startswith("$argon2")
    assert "new-plain" not in changed.hashed_password


async def test_oauth(db: EventSourcedUserDatabase[Any, Any], engine: AsyncEngine) -> None:
    user = await db.create({"email": "lancelot@camelot.bt", "hashed_password": "guinevere"})
    user = await db.add_oauth_account(user, OAUTH)
    user = await db.add_oauth_account(
        user, {**OAUTH, "oauth_name": "service2", "account_id": "user_oauth2"}
    )
    assert [a.oauth_name for a in user.oauth_accounts] == ["service1", "service2"]

    first = user.oauth_accounts[0]
    user = await db.update_oauth_account(user, first, {**OAUTH, "access_token": "NEW"})
    assert [a.access_token for a in user.oauth_accounts] == ["NEW", "TOKEN"]

    got = await db.get_by_oauth_account("service1", "user_oauth1")
    assert got is not None
    assert got.id == user.id
    assert [a.oauth_name for a in got.oauth_accounts] == ["service1", "service2"]
    assert await db.get_by_oauth_account("service1", "nope") is None

    await db.delete(user)  # with OAuth accounts: works (upstream fails on the FK)
    assert await db.get(user.id) is None
    assert await db.get_by_oauth_account("service1", "user_oauth1") is None
    assert await count_events(engine, "UserDeleted") == 1


async def test_oauth_methods_without_table_raise_before_io(sessions: Sessions) -> None:
    async with sessions() as session:
        db = UserDatabase(session, User)
        user = User(id=uuid.uuid4(), email="a@x.io", hashed_password="h")
        with pytest.raises(NotImplementedError):
            await db.get_by_oauth_account("x", "y")
        with pytest.raises(NotImplementedError):
            await db.add_oauth_account(user, OAUTH)
        with pytest.raises(NotImplementedError):
            await db.update_oauth_account(user, OAuthAccount(id=uuid.uuid4()), {})
        assert not session.in_transaction()


async def test_no_secret_in_logs(
    db: EventSourcedUserDatabase[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await db.create({"email": "a@x.io", "password": "plain-SECRET-1"})
    user = await db.update(user, {"password": "plain-SECRET-2"})
    user = await db.add_oauth_account(user, {**OAUTH, "access_token": "tok-SECRET"})
    with pytest.raises(InvalidCommandError):
        await db.update(user, {"password": "plain-SECRET-3", "nope": 1})
    # aiosqlite's own DEBUG logger prints SQL parameters: a driver trace, not ours
    ours = [r for r in caplog.records if not r.name.startswith("aiosqlite")]
    assert ours
    text = " ".join(r.getMessage() + str(r.exc_text or "") for r in ours)
    assert "SECRET" not in text
    assert user.hashed_password not in text


async def test_twenty_concurrent_updates_of_one_user(
    sessions: Sessions, db: EventSourcedUserDatabase[Any, Any], engine: AsyncEngine
) -> None:
    user = await db.create({"email": "patch@camelot.bt", "hashed_password": "h"})

    async def patch(i: int) -> User:
        # like a request: the session reads the user first (and holds a connection)
        async with sessions() as session:
            mine = UserDatabase(session, User, OAuthAccount)
            current = await mine.get(user.id)
            change = {"first_name": f"n{i}"} if i % 2 else {"email": f"p{i}@camelot.bt"}
            updated: User = await mine.update(current, change)
            return updated

    results = await asyncio.gather(*(patch(i) for i in range(20)))
    # each caller sees at least its own write (the projection may already show later ones)
    assert all(r.version >= 2 for r in results)
    async with engine.connect() as conn:
        versions = (
            await conn.execute(
                select(events.c.stream_version)
                .where(events.c.stream_id == user.id)
                .order_by(events.c.stream_version)
            )
        ).scalars()
        assert list(versions) == list(range(1, 22))
