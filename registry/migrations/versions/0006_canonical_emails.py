"""canonical emails: reservation keys and the read model's addresses in the one email rule

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

Before this revision the reservation key was `strip().lower()` of the typed address, the read
model kept the address as typed and lookups compared SQL `lower(email)`. Now every one of them
holds `events.emails.normalise_email` (trimmed, NFC, IDNA domain, lower-cased) and lookups
compare by plain equality. This revision:

- rewrites `registry_email_reservations` keys into the canonical form. Two old keys that are
  one address now (NFC/NFD twins) keep the earliest reservation; the others are dropped and
  named in a warning (those users keep their accounts; the address is reserved once, and
  `get_by_email` answers with the first registered of them);
- rewrites `user.email` into the canonical form when the read model's `user` table is here
  (the default models, or an app's model of that name), and replaces its `lower(email)`
  index with a plain one. A read model under another table name is brought to the rule by
  `registry replay` (the projection writes the canonical form).

The rewrite is not undone by a downgrade (the canonical form is an address too); the index is.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from events.emails import normalise_email
from events.tables import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("registry.migrations")
BATCH = 1000


def _reservations(bind: sa.Connection) -> None:
    table = sa.table(
        "registry_email_reservations",
        sa.column("email", sa.String),
        sa.column("user_id", sa.Uuid),
        sa.column("reserved_at", UTCDateTime()),
    )
    columns = (table.c.email, table.c.user_id, table.c.reserved_at)
    # only the keys the rule changes are kept in memory (with old ASCII keys: none)
    moving: dict[str, list[Any]] = defaultdict(list)  # canonical key -> rows that map to it
    last = None
    while True:  # keyset pages: no long-held cursor
        stmt = sa.select(*columns).order_by(table.c.email).limit(BATCH)
        if last is not None:
            stmt = stmt.where(table.c.email > last)
        page = bind.execute(stmt).all()
        for row in page:
            key = normalise_email(row.email)
            if key != row.email:
                moving[key].append(row)
        if len(page) < BATCH:
            break
        last = page[-1].email
    for key, rows_to_move in moving.items():
        holder = bind.execute(sa.select(*columns).where(table.c.email == key)).first()
        claims = [*rows_to_move, *([holder] if holder is not None else [])]
        # first come, first served: the earliest reservation keeps the address
        keep = min(claims, key=lambda r: (r.reserved_at, str(r.user_id)))
        for row in claims:
            if row is not holder or keep is not holder:
                bind.execute(sa.delete(table).where(table.c.email == row.email))
        if keep is not holder:
            bind.execute(
                sa.insert(table).values(
                    email=key, user_id=keep.user_id, reserved_at=keep.reserved_at
                )
            )
        dropped = sorted(str(r.user_id) for r in claims if r is not keep)
        if dropped:
            log.warning(
                "users %s registered the address user %s holds under another spelling "
                "(NFC/NFD or letter case): their reservations were dropped; change their email",
                ", ".join(dropped),
                keep.user_id,
            )


def _read_model(bind: sa.Connection) -> None:
    users = sa.table("user", sa.column("id", sa.Uuid), sa.column("email", sa.String))
    last = None
    while True:
        stmt = sa.select(users.c.id, users.c.email).order_by(users.c.id).limit(BATCH)
        if last is not None:
            stmt = stmt.where(users.c.id > last)
        rows = bind.execute(stmt).all()
        for row in rows:
            key = normalise_email(row.email)
            if key != row.email:
                bind.execute(sa.update(users).where(users.c.id == row.id).values(email=key))
        if len(rows) < BATCH:
            return
        last = rows[-1].id


def upgrade() -> None:
    bind = op.get_bind()
    _reservations(bind)
    inspector = sa.inspect(bind)
    if "user" not in inspector.get_table_names():
        return
    if "email" not in {c["name"] for c in inspector.get_columns("user")}:
        return
    _read_model(bind)
    # (an expression index is not reflected on SQLite: drop it by name)
    op.execute("DROP INDEX IF EXISTS ix_user_email_lower")
    if "ix_user_email" not in {i["name"] for i in inspector.get_indexes("user")}:
        op.create_index("ix_user_email", "user", ["email"], unique=False)


def downgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "user" not in inspector.get_table_names():
        return
    if "ix_user_email" in {i["name"] for i in inspector.get_indexes("user")}:
        op.drop_index("ix_user_email", table_name="user")
    op.execute("DROP INDEX IF EXISTS ix_user_email_lower")
    op.create_index(
        "ix_user_email_lower", "user", [sa.literal_column("lower(email)")], unique=False
    )
