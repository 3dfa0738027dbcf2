"""The write side's own tables: uniqueness reservations and processed commands.

They are written in the same transaction as the events they belong to, always after the
INSERT into `events` (see the PostgreSQL note on transaction ids in `events.store`).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Uuid

from events.tables import UTCDateTime

metadata = MetaData()

#: one row per registered (not deleted) user: the normalised email is taken
email_reservations = Table(
    "registry_email_reservations",
    metadata,
    Column("email", String(320), primary_key=True),  # events.emails.normalise_email
    Column("user_id", Uuid(as_uuid=True), nullable=False),
    Column("reserved_at", UTCDateTime(), nullable=False),
    Index("ix_registry_email_reservations_user_id", "user_id"),
)

#: one row per linked OAuth account: (provider, account id) belongs to one user
oauth_reservations = Table(
    "registry_oauth_reservations",
    metadata,
    Column("oauth_name", String(100), primary_key=True),
    Column("account_id", String(320), primary_key=True),
    Column("user_id", Uuid(as_uuid=True), nullable=False),
    Column("oauth_account_id", Uuid(as_uuid=True), nullable=False),
    Index("ix_registry_oauth_reservations_user_id", "user_id"),
)

#: commands that carried a command_id, and what they did (stream versions (from, to]); the
#: command's kind and content fingerprint bind the id to that command (registry.service.idempotency)
processed_commands = Table(
    "registry_processed_commands",
    metadata,
    Column("command_id", String(200), primary_key=True),
    Column("command", String(50), nullable=False),
    Column("user_id", Uuid(as_uuid=True), nullable=False),
    Column("from_version", Integer, nullable=False),
    Column("to_version", Integer, nullable=False),
    Column("processed_at", UTCDateTime(), nullable=False),
    # NULL: recorded before fingerprints existed, or cleared by the user's erasure
    Column("fingerprint", String(100), nullable=True),
    # an erasure clears the fingerprints of the user's commands
    Index("ix_registry_processed_commands_user_id", "user_id"),
)
