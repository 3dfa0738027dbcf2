"""The event store: append with an expected version, read a stream, read the whole log in
commit-safe order after a checkpoint, and wait for new events.

`EventStore(engine)` is the store for the engine's database: `PostgresEventStore` (group
commit, the transaction-id read horizon, LISTEN/NOTIFY) or `SqliteEventStore` (the guarded
single-statement append). Both implement the port `events.port.EventLog`, as does
`events.memory.InMemoryEventStore`.
"""

from __future__ import annotations

from events.checks import MAX_EVENTS_PER_APPEND
from events.port import EventLog, LogHead
from events.postgresql import PostgresEventStore
from events.sql import EventStore, engine_wakeup
from events.sqlite import SqliteEventStore
from events.statements import decode

EventStore.backends.update(postgresql=PostgresEventStore, sqlite=SqliteEventStore)

__all__ = [
    "MAX_EVENTS_PER_APPEND",
    "EventLog",
    "EventStore",
    "LogHead",
    "PostgresEventStore",
    "SqliteEventStore",
    "decode",
    "engine_wakeup",
]
