"""The baseline's models: fastapi-users-db-sqlalchemy's documented tables, with OAuth accounts
loaded through a selectin relationship, in a `baseline` schema of the bench database."""

from __future__ import annotations

from fastapi_users_db_sqlalchemy import (
    SQLAlchemyBaseOAuthAccountTableUUID,
    SQLAlchemyBaseUserTableUUID,
    SQLAlchemyUserDatabase,
)
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

__all__ = ["BaselineBase", "BaselineOAuthAccount", "BaselineUser", "SQLAlchemyUserDatabase"]


class BaselineBase(DeclarativeBase):
    metadata = MetaData(schema="baseline")  # unqualified FKs ("user.id") resolve here too


class BaselineOAuthAccount(SQLAlchemyBaseOAuthAccountTableUUID, BaselineBase):
    pass


class BaselineUser(SQLAlchemyBaseUserTableUUID, BaselineBase):
    oauth_accounts: Mapped[list[BaselineOAuthAccount]] = relationship(
        "BaselineOAuthAccount", lazy="selectin"
    )
