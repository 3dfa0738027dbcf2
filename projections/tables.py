"""Read-model tables: the mixins apps subclass, and the projector's own bookkeeping tables.

The mixins are used exactly like fastapi-users-db-sqlalchemy's::

    class User(BaseUserTableUUID, Base):          # Base: the app's DeclarativeBase
        first_name: Mapped[str | None] = mapped_column(String(255), default=None)

Email is NOT unique in the read model: uniqueness is enforced on the write side (invariant 3),
and projection partitions run independently, so an address freed by one user and taken by
another may briefly sit on both rows. `email` holds the canonical form of the address
(`events.emails.normalise_email`), so lookups compare by plain equality on its index.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from events.tables import UTCDateTime

#: the projector's bookkeeping tables and the default `User` / `OAuthAccount` models
metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


class BaseUserTableUUID:
    """Declarative mixin for the `user` read-model table (UUID primary key).

    `version` is the stream version the row reflects; `created_at` / `updated_at` are the
    recorded times of the first and latest event applied (so a replay reproduces them).
    """

    __tablename__ = "user"

    if TYPE_CHECKING:  # FastAPI Users' protocols, as plain attributes (as upstream's mixins do)
        id: uuid.UUID
        email: str
        hashed_password: str
        is_active: bool
        is_superuser: bool
        is_verified: bool
    else:
        id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
        email: Mapped[str] = mapped_column(String(length=320), nullable=False)
        hashed_password: Mapped[str] = mapped_column(String(length=1024), nullable=False)
        is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
        is_superuser: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
        is_verified: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)

    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        # a plain index: lookups compare the canonical form, never the database's lower()
        return (Index(f"ix_{cls.__tablename__}_email", "email"),)


class BaseOAuthAccountTableUUID:
    """Declarative mixin for the `oauth_account` read-model table.

    The columns of fastapi-users' `SQLAlchemyBaseOAuthAccountTableUUID`, plus `link_order`
    (the user's stream version when the account was linked: accounts list in link order).
    """

    __tablename__ = "oauth_account"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    oauth_name: Mapped[str] = mapped_column(String(length=100), index=True, nullable=False)
    access_token: Mapped[str] = mapped_column(String(length=1024), nullable=False)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    refresh_token: Mapped[str | None] = mapped_column(String(length=1024), nullable=True)
    account_id: Mapped[str] = mapped_column(String(length=320), index=True, nullable=False)
    account_email: Mapped[str] = mapped_column(String(length=320), nullable=False)
    link_order: Mapped[int] = mapped_column(Integer, default=0, nullable=False)

    @declared_attr
    def user_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(
            Uuid, ForeignKey("user.id", ondelete="cascade"), index=True, nullable=False
        )

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        name = cls.__tablename__
        return (UniqueConstraint("oauth_name", "account_id", name=f"uq_{name}_oauth_account"),)


#: one row per projection and partition: everything up to (tx_id, position) is applied
projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("partitions", Integer, nullable=False),
    Column("tx_id", BigInteger, nullable=False, default=0),
    Column("position", BigInteger, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
)

#: who may process a partition, until when (epoch seconds on the database's clock)
projection_leases = Table(
    "projection_leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("holder", String(200), nullable=True),
    Column("expires_at", Double, nullable=False, default=0.0),
)

#: live workers per projection (heartbeats), so that they share partitions fairly
projection_workers = Table(
    "projection_workers",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("worker_id", String(200), primary_key=True),
    Column("expires_at", Double, nullable=False),
)

#: streams whose rows a projection deleted, and at which version: an older event applied
#: again (a re-delivered batch) never brings the row back
projection_tombstones = Table(
    "projection_tombstones",
    metadata,
    Column("projection", String(100), primary_key=True),
    Column("stream_id", Uuid, primary_key=True),
    Column("version", Integer, nullable=False),
)

#: partitions a projector stopped on: the event it could not apply after its attempts, and
#: why (exception type and first line; never SQL parameters). Gone once retried or skipped.
projection_failures = Table(
    "projection_failures",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("tx_id", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("stream_id", Uuid, nullable=True),
    Column("stream_version", Integer, nullable=True),
    Column("event_type", String(100), nullable=True),
    Column("reason", String(1000), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("worker", String(200), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=False, default=utcnow),
)

#: events an operator skipped (`registry projections skip`): never applied, always on record
projection_skips = Table(
    "projection_skips",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("tx_id", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("stream_id", Uuid, nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("event_type", String(100), nullable=False),
    #: the failure recorded for the event when it was skipped, if any
    Column("reason", String(1000), nullable=True),
    #: the operator's why
    Column("note", String(1000), nullable=False),
    Column("skipped_by", String(200), nullable=False),
    Column("skipped_at", UTCDateTime(), nullable=False, default=utcnow),
    Index("ix_projection_skips_name_partition", "name", "partition"),
)
