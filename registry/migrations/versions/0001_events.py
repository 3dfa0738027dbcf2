"""The append-only events table.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from events.tables import (
    PG_NOTIFY_FUNCTION,
    PG_NOTIFY_TRIGGER,
    PG_TX_DEFAULT_DDL,
    JSONType,
    PositionType,
    UTCDateTime,
)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", PositionType, primary_key=True, autoincrement=True),
        sa.Column("tx_id", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("stream_version", sa.Integer(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("data", JSONType, nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
        sa.UniqueConstraint("event_id", name="events_event_id_key"),
    )
    op.create_index("ix_events_tx_position", "events", ["tx_id", "position"])
    op.create_index("ix_events_shard_tx_position", "events", ["shard", "tx_id", "position"])
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_TX_DEFAULT_DDL)
        op.execute(PG_NOTIFY_FUNCTION)
        op.execute(PG_NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_notify ON events")
        op.execute("DROP FUNCTION IF EXISTS registry_notify_events()")
    op.drop_table("events")
