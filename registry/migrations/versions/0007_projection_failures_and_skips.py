"""projection failures and skips: a partition stopped on an event it cannot apply, and the
events operators skipped

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from events.tables import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projection_failures",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=True),
        sa.Column("stream_version", sa.Integer(), nullable=True),
        sa.Column("event_type", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("failed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", "partition"),
    )
    op.create_table(
        "projection_skips",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("stream_version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=False),
        sa.Column("skipped_by", sa.String(length=200), nullable=False),
        sa.Column("skipped_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_projection_skips_name_partition", "projection_skips", ["name", "partition"])


def downgrade() -> None:
    op.drop_index("ix_projection_skips_name_partition", table_name="projection_skips")
    op.drop_table("projection_skips")
    op.drop_table("projection_failures")
