"""idempotency keys bound to their command: a content fingerprint per processed command

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Rows recorded before this have no fingerprint: a command_id of theirs is checked by the
command's kind only (registry.idempotency.matches).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "registry_processed_commands",
        sa.Column("fingerprint", sa.String(length=100), nullable=True),
    )
    op.create_index(
        "ix_registry_processed_commands_user_id",
        "registry_processed_commands",
        ["user_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_registry_processed_commands_user_id", table_name="registry_processed_commands"
    )
    op.drop_column("registry_processed_commands", "fingerprint")
