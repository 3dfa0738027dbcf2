"""The service's default read-model classes (what `registry serve` projects into when the app
gives no models of its own)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from projections.tables import BaseOAuthAccountTableUUID, BaseUserTableUUID, metadata


class Base(DeclarativeBase):
    metadata = metadata


class OAuthAccount(BaseOAuthAccountTableUUID, Base):
    pass


class User(BaseUserTableUUID, Base):
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship(
        lazy="selectin", order_by=OAuthAccount.link_order, cascade="all, delete-orphan"
    )
