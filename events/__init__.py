"""The event log: event catalog, envelope, the `events` table and the store."""

from events.catalog import (
    EVENT_TYPES,
    Event,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    UserActivated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserErased,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserUnverified,
    UserVerified,
    event_class,
)
from events.emails import normalise_email
from events.engine import create_engine, normalise_url
from events.envelope import Cursor, Metadata, RecordedEvent, shard_of
from events.errors import (
    ConcurrencyError,
    CorruptEventError,
    EventStoreError,
    InvalidEventError,
    UnknownEventTypeError,
)
from events.notify import Wakeup
from events.store import EventStore, LogHead

__all__ = [
    "EVENT_TYPES",
    "ConcurrencyError",
    "CorruptEventError",
    "Cursor",
    "Event",
    "EventStore",
    "EventStoreError",
    "InvalidEventError",
    "LogHead",
    "Metadata",
    "OAuthAccountLinked",
    "OAuthAccountUpdated",
    "RecordedEvent",
    "UnknownEventTypeError",
    "UserActivated",
    "UserDeactivated",
    "UserDeleted",
    "UserEmailChanged",
    "UserErased",
    "UserPasswordChanged",
    "UserProfileUpdated",
    "UserRegistered",
    "UserSuperuserGranted",
    "UserSuperuserRevoked",
    "UserUnverified",
    "UserVerified",
    "Wakeup",
    "create_engine",
    "event_class",
    "normalise_email",
    "normalise_url",
    "shard_of",
]
