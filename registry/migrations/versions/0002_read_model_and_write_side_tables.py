"""projector bookkeeping and write side tables

The read model tables (`user`, `oauth_account`) are not the registry's: they belong to the
app's models and are created from them (`registry.schema.ensure_schema`). Databases migrated
before this was so keep the tables this revision used to create; they are the app's now.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from events.tables import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("partitions", sa.Integer(), nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", "partition"),
    )
    op.create_table(
        "projection_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", "partition"),
    )
    op.create_table(
        "projection_tombstones",
        sa.Column("projection", sa.String(length=100), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("projection", "stream_id"),
    )
    op.create_table(
        "projection_workers",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", "worker_id"),
    )
    op.create_table(
        "registry_email_reservations",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("reserved_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email"),
    )
    op.create_index(
        "ix_registry_email_reservations_user_id",
        "registry_email_reservations",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "registry_oauth_reservations",
        sa.Column("oauth_name", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("oauth_account_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("oauth_name", "account_id"),
    )
    op.create_index(
        "ix_registry_oauth_reservations_user_id",
        "registry_oauth_reservations",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "registry_processed_commands",
        sa.Column("command_id", sa.String(length=200), nullable=False),
        sa.Column("command", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=False),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("command_id"),
    )


def downgrade() -> None:
    op.drop_table("registry_processed_commands")
    op.drop_index(
        "ix_registry_oauth_reservations_user_id", table_name="registry_oauth_reservations"
    )
    op.drop_table("registry_oauth_reservations")
    op.drop_index(
        "ix_registry_email_reservations_user_id", table_name="registry_email_reservations"
    )
    op.drop_table("registry_email_reservations")
    op.drop_table("projection_workers")
    op.drop_table("projection_tombstones")
    op.drop_table("projection_leases")
    op.drop_table("projection_checkpoints")
