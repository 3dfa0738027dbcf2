"""The peer's models: fastapi-users-db-sqlalchemy's documented tables in a `baseline` schema of
the bench database, one set per shape of figure 1 (each shape runs in a database of its own):
without OAuth, and with OAuth accounts loaded by `lazy="joined"` as the FastAPI Users docs
write the relationship."""

from __future__ import annotations

from fastapi_users_db_sqlalchemy import (
    SQLAlchemyBaseOAuthAccountTableUUID,
    SQLAlchemyBaseUserTableUUID,
    SQLAlchemyUserDatabase,
)
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

__all__ = [
    "PeerOAuthAccount",
    "PeerOAuthBase",
    "PeerOAuthUser",
    "PeerPlainBase",
    "PeerPlainUser",
    "SQLAlchemyUserDatabase",
]

SCHEMA = "baseline"


class PeerPlainBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class PeerPlainUser(SQLAlchemyBaseUserTableUUID, PeerPlainBase):
    """The app's `User` without OAuth: no relationship."""


class PeerOAuthBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)  # unqualified FKs ("user.id") resolve here too


class PeerOAuthAccount(SQLAlchemyBaseOAuthAccountTableUUID, PeerOAuthBase):
    pass


class PeerOAuthUser(SQLAlchemyBaseUserTableUUID, PeerOAuthBase):
    """The app's `User` with OAuth accounts, as the FastAPI Users docs declare it."""

    oauth_accounts: Mapped[list[PeerOAuthAccount]] = relationship("PeerOAuthAccount", lazy="joined")
