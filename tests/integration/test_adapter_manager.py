"""Every call FastAPI Users' BaseUserManager makes, through EventSourcedUserDatabase; stale
sessions; read-your-writes timeout; inline and worker projection agree."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.security import OAuth2PasswordRequestForm
from fastapi_users import BaseUserManager, UUIDIDMixin, exceptions, schemas
from fastapi_users.password import PasswordHelper
from pwdlib import PasswordHash
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typing_extensions import override

from events import EventStore
from events.tables import metadata as events_metadata
from projections import UserProjection, leases
from projections.tables import projection_checkpoints, projection_tombstones
from registry import EventSourcedUserDatabase, run_projector
from registry.adapter.runtime import custom_columns, use_handlers
from registry.errors import ProjectionTimeoutError
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers
from registry.settings import Settings
from registry.tables import metadata as registry_metadata
from tests.support.adapter import OAUTH, OAuthAccount, User, UserDatabase, projector_caught_up
from tests.support.models import table_of

Sessions = async_sessionmaker[AsyncSession]


class UserCreate(schemas.BaseUserCreate):
    first_name: str | None = None


class UserUpdate(schemas.BaseUserUpdate):
    first_name: str | None = None


class Manager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = "reset-secret-" + "r" * 32
    verification_token_secret = "verify-secret-" + "v" * 32
    tokens: dict[str, str]

    @override
    async def on_after_forgot_password(
        self, user: User, token: str, request: Request | None = None
    ) -> None:
        self.tokens["reset"] = token

    @override
    async def on_after_request_verify(
        self, user: User, token: str, request: Request | None = None
    ) -> None:
        self.tokens["verify"] = token


@pytest.fixture
async def sessions(engine: AsyncEngine, database_url: str) -> AsyncIterator[Sessions]:
    async with run_projector(
        engine, User, OAuthAccount, settings=Settings(database_url=database_url)
    ):
        yield async_sessionmaker(engine, expire_on_commit=False)


def creds(username: str, password: str) -> OAuth2PasswordRequestForm:
    return OAuth2PasswordRequestForm(username=username, password=password)


async def test_user_manager_end_to_end(sessions: Sessions) -> None:
    async with sessions() as session:
        manager = Manager(EventSourcedUserDatabase(session, User, OAuthAccount))
        manager.tokens = {}
        user = await manager.create(
            UserCreate(email="King.Arthur@camelot.bt", password="guinevere", first_name="Arthur")
        )
        assert user.first_name == "Arthur"
        assert user.hashed_password.startswith("$argon2")
        with pytest.raises(exceptions.UserAlreadyExists):
            await manager.create(UserCreate(email="king.arthur@CAMELOT.bt", password="x"))
        # login with the typed address in another case
        authenticated = await manager.authenticate(creds("KING.arthur@camelot.bt", "guinevere"))
        assert authenticated is not None
        assert authenticated.id == user.id
        assert await manager.authenticate(creds("king.arthur@camelot.bt", "wrong")) is None

        await manager.request_verify(user)
        verified = await manager.verify(manager.tokens["verify"])
        assert verified.is_verified is True

        updated = await manager.update(
            UserUpdate(email="arthur@camelot.bt", password="excalibur", first_name="A."),
            verified,
            safe=True,
        )
        assert (updated.email, updated.is_verified, updated.first_name) == (
            "arthur@camelot.bt",
            False,
            "A.",
        )
        assert await manager.authenticate(creds("arthur@camelot.bt", "excalibur")) is not None
        assert await manager.authenticate(creds("king.arthur@camelot.bt", "guinevere")) is None

        await manager.forgot_password(updated)
        await manager.reset_password(manager.tokens["reset"], "holy-grail")
        assert await manager.authenticate(creds("arthur@camelot.bt", "holy-grail")) is not None

        got = await manager.get(user.id)
        await manager.delete(got)
        with pytest.raises(exceptions.UserNotExists):
            await manager.get(user.id)
        with pytest.raises(exceptions.UserNotExists):
            await manager.get_by_email("arthur@camelot.bt")


async def test_user_manager_upgrades_a_bcrypt_hash(sessions: Sessions) -> None:
    bcrypt = PasswordHelper(PasswordHash((BcryptHasher(),)))
    async with sessions() as session:
        db = UserDatabase(session, User, OAuthAccount)
        await db.create({"email": "old@camelot.bt", "hashed_password": bcrypt.hash("pw")})
        manager = Manager(db)
        user = await manager.authenticate(creds("old@camelot.bt", "pw"))
        assert user is not None
        assert user.hashed_password.startswith("$argon2")


async def test_user_manager_oauth_calls(sessions: Sessions) -> None:
    async with sessions() as session:
        manager = Manager(EventSourcedUserDatabase(session, User, OAuthAccount))
        args = ("service1", "TOKEN", "user_oauth1", "lancelot@camelot.bt")
        user = await manager.oauth_callback(*args, expires_at=1)
        assert [a.account_id for a in user.oauth_accounts] == ["user_oauth1"]
        again = await manager.oauth_callback(
            "service1", "TOKEN2", "user_oauth1", "lancelot@camelot.bt"
        )
        assert again.id == user.id
        assert again.oauth_accounts[0].access_token == "TOKEN2"
        linked = await manager.oauth_associate_callback(again, "service2", "T", "u2", "l@x.io")
        assert [a.oauth_name for a in linked.oauth_accounts] == ["service1", "service2"]
        assert (await manager.get_by_oauth_account("service2", "u2")).id == user.id


async def test_reads_are_fresh_in_a_session_that_already_holds_the_user(
    sessions: Sessions,
) -> None:
    async with sessions() as s1, sessions() as s2:
        db1 = UserDatabase(s1, User, OAuthAccount)
        db2 = UserDatabase(s2, User, OAuthAccount)
        user = await db1.create({"email": "a@x.io", "hashed_password": "h"})
        stale = await db2.get(user.id)  # s2 now holds the row in its identity map
        assert stale is not None
        await db1.update(user, {"first_name": "New"})
        fresh = await db2.get(user.id)
        assert fresh is not None
        assert fresh.first_name == "New"


async def test_with_no_projector_the_writer_projects_its_own_writes(engine: AsyncEngine) -> None:
    """Drop-in by the import alone: no run_projector, handlers without the own-projection fast
    path: each write still returns once its reads see it (the writer projects the stream)."""
    await ensure_schema(engine, User, OAuthAccount)  # tables, but no projector
    handlers = CommandHandlers(engine, EventStore(engine), profile_fields=custom_columns(User))
    use_handlers(engine, handlers, User, OAuthAccount, timeout=0.3)
    async with async_sessionmaker(engine)() as session:
        db = UserDatabase(session, User, OAuthAccount)
        started = time.monotonic()
        user = await db.create({"email": "a@x.io", "hashed_password": "h", "first_name": "A"})
        user = await db.update(user, {"first_name": "B", "is_verified": True})
        user = await db.add_oauth_account(user, OAUTH)
        assert (user.first_name, user.is_verified, len(user.oauth_accounts)) == ("B", True, 1)
        assert time.monotonic() - started < 5


async def test_timeout_says_the_projector_is_behind(engine: AsyncEngine) -> None:
    """A projector holds the user's partition but does not project: the write fails with a
    clear timeout instead of waiting for ever (and is not projected by the writer)."""

    await ensure_schema(engine, User, OAuthAccount)
    async with engine.begin() as conn:  # a live "worker" that never runs a batch
        await leases.ensure_partitions(conn, "users", 1)
        assert await leases.acquire(conn, "users", 0, "stuck-worker", ttl=60)
    handlers = CommandHandlers(engine, EventStore(engine), profile_fields=custom_columns(User))
    use_handlers(engine, handlers, User, OAuthAccount, timeout=0.3)
    async with async_sessionmaker(engine)() as session:
        db = UserDatabase(session, User, OAuthAccount)
        started = time.monotonic()
        with pytest.raises(ProjectionTimeoutError, match="the projector is behind"):
            await db.create({"email": "a@x.io", "hashed_password": "h"})
        assert time.monotonic() - started < 5


async def _snapshot(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        users = (await conn.execute(select(User.__table__).order_by(User.__table__.c.email))).all()
        accounts = (
            await conn.execute(select(OAuthAccount.__table__).order_by(OAuthAccount.__table__.c.id))
        ).all()
    return [tuple(r) for r in users] + [tuple(r) for r in accounts]


async def test_inline_and_worker_projection_agree(engine: AsyncEngine, database_url: str) -> None:
    await ensure_schema(engine, User, OAuthAccount)
    async with engine.begin() as conn:  # idempotent: the migrations made them already
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
    store = EventStore(engine)
    inline = UserProjection(User, OAuthAccount)
    handlers = CommandHandlers(
        engine, store, profile_fields=custom_columns(User), inline_projection=inline
    )
    use_handlers(engine, handlers, User, OAuthAccount, timeout=0.5)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        db = UserDatabase(session, User, OAuthAccount)
        # no projector runs: inline writes are visible on return
        a = await db.create({"email": "a@x.io", "hashed_password": "h", "first_name": "A"})
        a = await db.add_oauth_account(a, OAUTH)
        a = await db.update(a, {"is_verified": True, "first_name": "AA"})
        b = await db.create({"email": "b@x.io", "hashed_password": "h"})
        await db.update(b, {"email": "b2@x.io"})
        c = await db.create({"email": "c@x.io", "hashed_password": "h"})
        c = await db.add_oauth_account(c, {**OAUTH, "account_id": "other"})
        await db.delete(c)
    inline_rows = await _snapshot(engine)
    assert len(inline_rows) == 3  # a, b and a's account

    settings = Settings(database_url=database_url)
    async with run_projector(engine, User, OAuthAccount, settings=settings, migrate=False):
        await projector_caught_up(engine, store)  # the worker re-applies everything: a no-op
    assert await _snapshot(engine) == inline_rows

    async with engine.begin() as conn:  # forget the projection; the worker alone rebuilds it
        for table in (table_of(OAuthAccount), table_of(User)):
            await conn.execute(delete(table))
        await conn.execute(delete(projection_tombstones))
        await conn.execute(delete(projection_checkpoints))
    async with run_projector(engine, User, OAuthAccount, settings=settings, migrate=False):
        await projector_caught_up(engine, store)
    assert await _snapshot(engine) == inline_rows
