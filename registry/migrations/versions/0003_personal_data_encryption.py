"""personal data encryption: sealed event values and per-user data keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from events.tables import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("sealed", sa.LargeBinary(), nullable=True))
    op.create_table(
        "event_data_keys",
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("master_key_id", sa.String(length=32), nullable=True),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("stream_id"),
    )
    op.create_index(
        "ix_event_data_keys_master_key_id", "event_data_keys", ["master_key_id"], unique=False
    )
    op.create_index("ix_event_data_keys_shard", "event_data_keys", ["shard"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_event_data_keys_shard", table_name="event_data_keys")
    op.drop_index("ix_event_data_keys_master_key_id", table_name="event_data_keys")
    op.drop_table("event_data_keys")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("sealed")
