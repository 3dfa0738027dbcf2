"""An application's own user models as the FastAPI Users documentation maps them, and an OAuth account to link."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID


class Base(DeclarativeBase):
    pass


class OAuthAccount(BaseOAuthAccountTableUUID, Base):
    pass


class User(BaseUserTableUUID, Base):
    first_name: Mapped[str | None] = mapped_column(String(255), default=None)
    # the fastapi-users documentation's mapping: no order_by
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship("OAuthAccount", lazy="joined")


OAUTH = {
    "oauth_name": "service1",
    "access_token": "TOKEN",
    "expires_at": 1579000751,
    "account_id": "user_oauth1",
    "account_email": "king.arthur@camelot.bt",
}
