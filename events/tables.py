"""The `events` table: append-only, one row per event."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import DDL
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

JSONType = JSON().with_variant(JSONB(), "postgresql")
#: SQLite only has 64-bit INTEGER PRIMARY KEY as its rowid alias
PositionType = BigInteger().with_variant(Integer(), "sqlite")

NOTIFY_CHANNEL = "registry_events"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: object, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # pragma: no cover - defensive, aiosqlite parses datetimes
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


events = Table(
    "events",
    metadata,
    Column("position", PositionType, primary_key=True, autoincrement=True),
    # id of the writing transaction on PostgreSQL (pg_current_xact_id); 0 on SQLite
    Column(
        "tx_id",
        BigInteger,
        nullable=False,
        server_default=text("0"),
    ),
    Column("stream_id", Uuid(as_uuid=True), nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("event_id", Uuid(as_uuid=True), nullable=False, unique=True),
    Column("event_type", String(100), nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("data", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    # the event's personal values, AES-GCM under its stream's data key (events.crypto);
    # NULL when it has none (or was stored before encryption)
    Column("sealed", LargeBinary, nullable=True),
    UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
    Index("ix_events_tx_position", "tx_id", "position"),
    Index("ix_events_shard_tx_position", "shard", "tx_id", "position"),
    Index("ix_events_recorded_at", "recorded_at"),
)

#: one data key per stream (user), wrapped by a master key that is never stored; a destroyed
#: key keeps its row (no key material, `erased_at` set) so the stream reads as erased
data_keys = Table(
    "event_data_keys",
    metadata,
    Column("stream_id", Uuid(as_uuid=True), primary_key=True),
    # the stream's shard (events.envelope.shard_of): a replay reading one shard joins only
    # that shard's keys
    Column("shard", SmallInteger, nullable=False),
    Column("master_key_id", String(32), nullable=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("erased_at", UTCDateTime(), nullable=True),
    Index("ix_event_data_keys_master_key_id", "master_key_id"),
    Index("ix_event_data_keys_shard", "shard"),
)

#: the master key this database belongs to: recorded (its key_id, a fingerprint) by the first
#: process that creates the schema with a key, so that a process with any other key is refused
#: before it writes anything, even before the first data key exists. One row, id 1; a
#: completed `registry rotate-master-key` moves it to the new key.
master_key_record = Table(
    "event_master_key",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("key_id", String(32), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)

# On PostgreSQL the writing transaction's id is filled in by the database, and every
# INSERT statement wakes listeners (delivered at COMMIT, coalesced per transaction).
PG_TX_DEFAULT = "(pg_current_xact_id()::text)::bigint"
PG_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION registry_notify_events() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
  RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
PG_NOTIFY_TRIGGER = """
CREATE TRIGGER events_notify AFTER INSERT ON events
FOR EACH STATEMENT EXECUTE FUNCTION registry_notify_events()
"""
PG_TX_DEFAULT_DDL = f"ALTER TABLE events ALTER COLUMN tx_id SET DEFAULT {PG_TX_DEFAULT}"

for _ddl in (PG_TX_DEFAULT_DDL, PG_NOTIFY_FUNCTION, PG_NOTIFY_TRIGGER):
    event.listen(events, "after_create", DDL(_ddl).execute_if(dialect="postgresql"))  # type: ignore[no-untyped-call]
