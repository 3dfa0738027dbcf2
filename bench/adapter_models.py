"""Figure 1's app models, one set per shape, each on its own `DeclarativeBase` as an app
declares them (examples/fastapi_users_app.py): without OAuth (the common app) and with OAuth
accounts loaded by `lazy="joined"`, as the FastAPI Users docs write the relationship."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID

__all__ = ["OAuthAccount", "OAuthBase", "OAuthUser", "PlainBase", "PlainUser"]


class PlainBase(DeclarativeBase):
    pass


class PlainUser(BaseUserTableUUID, PlainBase):
    """The app's `User` without OAuth: no relationship."""


class OAuthBase(DeclarativeBase):
    pass


class OAuthAccount(BaseOAuthAccountTableUUID, OAuthBase):
    pass


class OAuthUser(BaseUserTableUUID, OAuthBase):
    """The app's `User` with OAuth accounts, as the FastAPI Users docs declare it."""

    oauth_accounts: Mapped[list[OAuthAccount]] = relationship("OAuthAccount", lazy="joined")
