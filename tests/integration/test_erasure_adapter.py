"""Erasure from a FastAPI Users app, on SQLite and PostgreSQL: `EventSourcedUserDatabase.erase`
and `erase_on_delete=True` (FastAPI Users' own `UserManager.delete`, what `DELETE /users/{id}`
calls), with the projector running in-process as the app's lifespan would run it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi_users import BaseUserManager, UUIDIDMixin
from fastapi_users.exceptions import UserNotExists
from fastapi_users.password import PasswordHelper
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from events.crypto import Crypto, Keyring, MasterKey, attach
from events.tables import events
from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID
from registry import EventSourcedUserDatabase, run_projector
from registry.settings import Settings
from tests.support.adapter import UserDatabase
from tests.support.erasure import assert_nowhere, dump_every_table


class Base(DeclarativeBase):
    pass


class OAuthAccount(BaseOAuthAccountTableUUID, Base):
    pass


class User(BaseUserTableUUID, Base):
    first_name: Mapped[str | None] = mapped_column(String(255), info={"personal": True})
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship("OAuthAccount", lazy="joined")


Sessions = async_sessionmaker[AsyncSession]
FAST_PASSWORDS = PasswordHelper(
    PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = verification_token_secret = "a test secret of 32+ bytes......"


@pytest.fixture
async def sessions(engine: AsyncEngine, database_url: str) -> AsyncIterator[Sessions]:
    attach(engine, Crypto(Keyring(MasterKey.generate()), personal_profile={"first_name"}))
    try:
        settings = Settings(database_url=database_url)
        async with run_projector(engine, User, OAuthAccount, settings=settings):
            yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        attach(engine, None)


async def count_events(engine: AsyncEngine, event_type: str) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(events).where(events.c.event_type == event_type)
        return int(await conn.scalar(stmt) or 0)


async def make_user(db: EventSourcedUserDatabase[Any, Any], tag: str) -> tuple[Any, list[str]]:
    manager = UserManager(db, FAST_PASSWORDS)
    hashed = FAST_PASSWORDS.hash(f"password-{tag}")
    user = await db.create(
        {"email": f"Ada.{tag}@Example.com", "hashed_password": hashed, "first_name": f"Ada{tag}"}
    )
    user = await db.update(user, {"email": f"ada.second.{tag}@example.com"})
    user = await manager.user_db.update(user, {"hashed_password": FAST_PASSWORDS.hash("p2")})
    user = await db.add_oauth_account(
        user,
        {
            "oauth_name": "google",
            "access_token": f"ya29-{tag}",
            "refresh_token": f"1//refresh-{tag}",
            "account_id": f"google-{tag}",
            "account_email": f"ada.oauth.{tag}@gmail.com",
        },
    )
    needles = [
        f"Ada.{tag}@Example.com",
        f"ada.second.{tag}@example.com",
        hashed,
        user.hashed_password,
        f"Ada{tag}",
        f"ya29-{tag}",
        f"1//refresh-{tag}",
        f"google-{tag}",
        f"ada.oauth.{tag}@gmail.com",
    ]
    return user, needles


async def test_erase_removes_the_user_at_once_and_every_trace_of_their_data(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    async with sessions() as session:
        db = UserDatabase(session, User, OAuthAccount)
        user, needles = await make_user(db, "one")
        other, _ = await make_user(db, "two")
        await db.erase(user)
        assert await db.get(user.id) is None  # read-your-writes: gone when erase returns
        assert await db.get_by_email("ada.second.one@example.com") is None
        assert await db.get_by_oauth_account("google", "google-one") is None
        kept = await db.get(other.id)
        assert kept is not None
        assert kept.first_name == "Adatwo"
        await db.erase(user)  # again: accepted, nothing appended
        assert await count_events(engine, "UserErased") == 1
        with pytest.raises(UserNotExists):
            await db.erase(User(id=uuid.uuid4(), email="x@y.z", hashed_password="h"))
        # the address and the OAuth account can be taken again
        again = await db.create({"email": "ADA.SECOND.one@example.com", "hashed_password": "h"})
        assert again.id != user.id
    assert_nowhere(await dump_every_table(engine), [n for n in needles if "second" not in n])


async def test_erase_on_delete_makes_fastapi_users_delete_erase(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    async with sessions() as session:
        db = UserDatabase(session, User, OAuthAccount, erase_on_delete=True)
        user, needles = await make_user(db, "three")
        manager = UserManager(db, FAST_PASSWORDS)
        await manager.delete(user)  # what FastAPI Users' DELETE /users/{id} calls
        assert await db.get(user.id) is None
        assert await count_events(engine, "UserErased") == 1
        assert await count_events(engine, "UserDeleted") == 0
    assert_nowhere(await dump_every_table(engine), needles)

    async with sessions() as session:  # the default stays a plain deletion
        db = UserDatabase(session, User, OAuthAccount)
        user, _ = await make_user(db, "four")
        await UserManager(db, FAST_PASSWORDS).delete(user)
        assert await count_events(engine, "UserDeleted") == 1
        assert await count_events(engine, "UserErased") == 1
