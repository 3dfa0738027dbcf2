"""The port of the event log: what every store offers, whatever keeps the events.

`events.store.EventStore` (PostgreSQL, SQLite) and `events.memory.InMemoryEventStore` implement
it; `tests/support/store_contract.py` is the contract each of them passes. The SQL stores also
take `conn=` on their reads and appends to join a caller's transaction; that is theirs, not
the port's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from events.catalog import Event
from events.crypto import Crypto
from events.envelope import Cursor, Metadata, RecordedEvent
from events.notify import Wakeup


@dataclass(frozen=True, slots=True)
class LogHead:
    """How big the log is: its event count and highest position (0 when empty)."""

    count: int
    position: int


class EventLog(Protocol):
    """An append-only log of streams of events, read back in an order that skips nothing."""

    @property
    def crypto(self) -> Crypto | None:
        """What seals and opens personal data in this log (None: stored in clear)."""
        ...

    @property
    def slow_poll(self) -> float:
        """The longest `wait_for_events` sleeps without a signal, in seconds."""
        ...

    async def append(
        self,
        stream_id: uuid.UUID | str,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata | dict[str, Any] | None = None,
        recorded_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """Append `new_events` to a stream whose head must be `expected_version` (0: a new
        stream), atomically; the events as recorded, numbered from `expected_version + 1`.

        Raises `ConcurrencyError` when the stream is at another version (stale or early),
        `InvalidEventError` for a malformed request (not a UUID, no events, not an event of
        the catalog, a naive `recorded_at`...), `StreamErasedError` for an erased stream on
        an encrypting log. Nothing is written when it raises.
        """
        ...

    async def stream_version(self, stream_id: uuid.UUID | str) -> int:
        """The stream's head version (0 when it has no events). `InvalidEventError` for a
        stream id that is not a UUID."""
        ...

    async def read_stream(
        self,
        stream_id: uuid.UUID | str,
        *,
        to_version: int | None = None,
        until: datetime | None = None,
        after_version: int | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """One stream's events in version order: whole, up to `to_version`, or recorded at or
        before `until` (timezone-aware, else `InvalidEventError`); from after `after_version`,
        at most `limit` of them (a page)."""
        ...

    async def read_after(
        self, cursor: Cursor, *, limit: int = 1000, shards: Sequence[int] | None = None
    ) -> list[RecordedEvent]:
        """Up to `limit` committed events after `cursor`, in log order: an event committed
        later is never placed before one a reader may already have passed, and each stream's
        events stay in version order. `shards`: only the streams of those shards."""
        ...

    async def read_after_each(
        self, cursors: Sequence[tuple[Cursor, Sequence[int]]], *, limit: int = 1000
    ) -> list[RecordedEvent]:
        """`read_after` for several sets of shards, each after its own cursor: up to `limit`
        events in all, in log order."""
        ...

    def iter_after(
        self, cursor: Cursor, *, batch_size: int = 5000, shards: Sequence[int] | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Batches of events after `cursor` until the head, in bounded memory."""
        ...

    async def head(self) -> LogHead:
        """Event count and highest position."""
        ...

    def committed(self) -> None:
        """Wake waiters in this process: call after committing a transaction that appended
        to this log on its own connection (the store's own appends do it themselves)."""
        ...

    def forget_key(self, stream_id: uuid.UUID) -> None:
        """Drop the stream's cached data key: call when a transaction that appended to the
        stream rolled back (a key made in it was not stored)."""
        ...

    async def wait_for_events(self, timeout: float) -> bool:
        """Sleep until new events may have been committed, or at most `timeout` seconds
        (never longer than `slow_poll`). True when woken by a signal; a caller re-reads
        after either way."""
        ...

    def listening(self, heard: Wakeup | None = None) -> AbstractAsyncContextManager[bool]:
        """While open, commits by other processes wake `wait_for_events` where the backend can
        signal them; elsewhere waiters rely on the slow poll. Yields True when the database
        signals every commit that appends (this process's too, once each) and then also
        wakes `heard`: a waiter on it alone hears each commit once."""
        ...
