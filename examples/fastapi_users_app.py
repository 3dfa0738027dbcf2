"""FastAPI Users' full example (JWT bearer auth, register, login, users, verify, reset password)
running on the event-sourced registry instead of `SQLAlchemyUserDatabase`.

The change from upstream's example is one import and one lifespan line:

    yield EventSourcedUserDatabase(session, User, OAuthAccount)   # was SQLAlchemyUserDatabase
    async with run_projector(engine, User, OAuthAccount): yield     # projects in-process

Run it (SQLite in ./example.db unless REGISTRY_DATABASE_URL or DATABASE_URL says otherwise,
e.g. postgresql+asyncpg://postgres@127.0.0.1/app):

    uvicorn examples.fastapi_users_app:app

Set APP_SECRET (JWT and token signing). Verification and reset tokens are "mailed" by
printing them, as upstream's example does.

Moving an existing app: `registry import-users --from sqlite+aiosqlite:///./old.db` with
REGISTRY_DATABASE_URL pointing at this app's database; users keep their ids and passwords.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.db import BaseUserDatabase
from fastapi_users.password import PasswordHelperProtocol
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from events import create_engine
from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID
from registry import EventSourcedUserDatabase, run_projector

log = logging.getLogger("examples.fastapi_users_app")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./example.db"

#: (kind, email, token) → deliver it; kind is "verify" or "reset-password"
Mailer = Callable[[str, str, str], None]


# --- models (db.py in upstream's example) ---------------------------------------------------


class Base(DeclarativeBase):
    pass


class OAuthAccount(BaseOAuthAccountTableUUID, Base):
    pass


class User(BaseUserTableUUID, Base):
    first_name: Mapped[str | None] = mapped_column(String(255), default=None)
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship(
        "OAuthAccount", lazy="selectin", order_by=OAuthAccount.link_order
    )


# --- schemas (schemas.py) ------------------------------------------------------------------


class UserRead(schemas.BaseUser[uuid.UUID]):
    first_name: str | None = None


class UserCreate(schemas.BaseUserCreate):
    first_name: str | None = None


class UserUpdate(schemas.BaseUserUpdate):
    first_name: str | None = None


# --- the app (users.py + app.py) -----------------------------------------------------------


def print_mail(kind: str, email: str, token: str) -> None:
    """Stands in for an email sender (upstream's example prints the token too)."""
    print(f"[mail to {email}] {kind} token: {token}")


def database_url_from_env() -> str:
    return os.environ.get("REGISTRY_DATABASE_URL") or os.environ.get(
        "DATABASE_URL", DEFAULT_DATABASE_URL
    )


def create_app(
    database_url: str | None = None,
    *,
    secret: str | None = None,
    mailer: Mailer = print_mail,
    password_helper: PasswordHelperProtocol | None = None,
) -> FastAPI:
    """The example app on `database_url` (default: the environment, then ./example.db).

    `password_helper` defaults to FastAPI Users' (Argon2); tests pass a cheaper one.

    `app.state.engine` and `app.state.session_maker` are exposed for tests and scripts.
    """
    jwt_secret: str = secret or os.environ.get(
        "APP_SECRET", "change-me: at least 32 bytes of secret"
    )
    engine = create_engine(database_url or database_url_from_env())
    session_maker = async_sessionmaker(engine, expire_on_commit=False)

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with session_maker() as session:
            yield session

    async def get_user_db(
        session: AsyncSession = Depends(get_async_session),
    ) -> AsyncIterator[BaseUserDatabase[User, uuid.UUID]]:
        yield EventSourcedUserDatabase(session, User, OAuthAccount)

    class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
        reset_password_token_secret = jwt_secret
        verification_token_secret = jwt_secret

        async def on_after_register(self, user: User, request: Request | None = None) -> None:
            log.info("user %s has registered", user.id)

        async def on_after_update(
            self, user: User, update_dict: dict[str, Any], request: Request | None = None
        ) -> None:
            # update_dict is the raw PATCH body: it may hold the plaintext password
            log.info("user %s updated %s", user.id, sorted(set(update_dict) - {"password"}))

        async def on_after_forgot_password(
            self, user: User, token: str, request: Request | None = None
        ) -> None:
            mailer("reset-password", user.email, token)

        async def on_after_request_verify(
            self, user: User, token: str, request: Request | None = None
        ) -> None:
            mailer("verify", user.email, token)

    async def get_user_manager(
        user_db: BaseUserDatabase[User, uuid.UUID] = Depends(get_user_db),
    ) -> AsyncIterator[UserManager]:
        yield UserManager(user_db, password_helper)

    def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
        return JWTStrategy(secret=jwt_secret, lifetime_seconds=3600)

    auth_backend = AuthenticationBackend(
        name="jwt",
        transport=BearerTransport(tokenUrl="auth/jwt/login"),
        get_strategy=get_jwt_strategy,
    )
    fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
    current_active_user = fastapi_users.current_user(active=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_projector(engine, User, OAuthAccount):
            yield
        await engine.dispose()

    app = FastAPI(title="FastAPI Users on an event log", lifespan=lifespan)
    app.state.engine = engine
    app.state.session_maker = session_maker

    app.include_router(
        fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt", tags=["auth"]
    )
    app.include_router(
        fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"]
    )
    app.include_router(fastapi_users.get_reset_password_router(), prefix="/auth", tags=["auth"])
    app.include_router(fastapi_users.get_verify_router(UserRead), prefix="/auth", tags=["auth"])
    app.include_router(
        fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users", tags=["users"]
    )

    @app.get("/authenticated-route")
    async def authenticated_route(user: User = Depends(current_active_user)) -> dict[str, str]:
        return {"message": f"Hello {user.email}!"}

    return app


app = create_app()
