"""The event log in memory: the port `events.port.EventLog` on Python lists, for tests and
for trying the domain without a database.

It keeps the contract of the SQL stores (`tests/support/store_contract.py`): optimistic
concurrency, the same checks on an append, version order per stream, the log read after a
cursor without skipping, waiting. One transaction writes at a time, as on SQLite, so positions
follow commit order and `tx_id` is always 0. Nothing is encrypted (`crypto` is None); an
erased stream's personal values read "[erased]", as on a database without a master key.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from events import checks
from events.catalog import Event, event_class
from events.crypto import Crypto, personal_spec, split_personal
from events.envelope import Cursor, Metadata, RecordedEvent, shard_of
from events.errors import ConcurrencyError, InvalidEventError
from events.notify import Wakeup
from events.port import LogHead

_SPEC = personal_spec(frozenset())


def _erased(recorded: RecordedEvent) -> RecordedEvent:
    """The event with its personal values replaced by "[erased]"."""
    data = recorded.event.model_dump(mode="json")
    clear, _ = split_personal(_SPEC[recorded.event_type], data)
    event = event_class(recorded.event_type).model_validate(clear)
    return dataclasses.replace(recorded, event=event, erased=True)


class MemoryTransaction:
    """Changes to an `InMemoryEventStore` that become visible together, or not at all."""

    def __init__(self, store: InMemoryEventStore) -> None:
        self._store = store
        self._position = store.head_position
        self._staged: dict[uuid.UUID, list[RecordedEvent]] = {}
        self._erase: set[uuid.UUID] = set()

    def read_stream(self, stream_id: uuid.UUID | str) -> list[RecordedEvent]:
        """The stream's events, this transaction's own included."""
        sid = checks.stream_uuid(stream_id, "stream id")
        return self._store.stream(sid) + self._staged.get(sid, [])

    def append(
        self,
        stream_id: uuid.UUID | str,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata | dict[str, Any] | None = None,
        recorded_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """`EventLog.append` within this transaction (see there for what it raises)."""
        sid = checks.stream_uuid(stream_id)
        checked = checks.events_and_payloads(new_events)
        version = checks.expected_version(expected_version, len(checked))
        meta = checks.metadata(metadata)
        when = checks.recorded_at(datetime.now(UTC) if recorded_at is None else recorded_at)
        head = len(self.read_stream(sid))
        if head != version:
            raise ConcurrencyError(sid, version, head)
        recorded = []
        for i, (item, _) in enumerate(checked, start=1):
            self._position += 1
            event = RecordedEvent(
                position=self._position,
                tx_id=0,
                stream_id=sid,
                stream_version=version + i,
                event_id=uuid.uuid4(),
                event_type=item.event_type,
                schema_version=item.schema_version,
                event=item,
                metadata=meta,
                recorded_at=when,
            )
            recorded.append(event)
        self._staged.setdefault(sid, []).extend(recorded)
        return recorded

    def erase(self, stream_id: uuid.UUID) -> None:
        """Make every event of the stream, past and future, read as erased."""
        self._erase.add(stream_id)

    def commit(self) -> None:
        """Make the changes visible (synchronous: no other task sees half of them)."""
        self._store.apply(self._staged, self._erase, self._position)


class InMemoryEventStore:
    """`events.port.EventLog` in memory (see the module docstring)."""

    slow_poll = 1.0  # nothing outside this process writes here: signals are never missed

    def __init__(self) -> None:
        self._log: list[RecordedEvent] = []
        self._streams: dict[uuid.UUID, list[RecordedEvent]] = {}
        self._erased: set[uuid.UUID] = set()
        self._writer = asyncio.Lock()
        self.head_position = 0
        self.wakeup = Wakeup()

    @property
    def crypto(self) -> Crypto | None:
        return None

    # ------------------------------------------------------------------ writing
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        """One writer at a time: its changes commit when the block exits normally; the caller
        then calls `committed()` to wake waiters."""
        async with self._writer:
            tx = MemoryTransaction(self)
            yield tx
            tx.commit()

    def apply(
        self,
        staged: dict[uuid.UUID, list[RecordedEvent]],
        erase: set[uuid.UUID],
        position: int,
    ) -> None:
        """Commit a transaction's changes (called by `MemoryTransaction.commit`)."""
        new = sorted((e for batch in staged.values() for e in batch), key=lambda e: e.position)
        for recorded in new:
            self._log.append(recorded)
            self._streams.setdefault(recorded.stream_id, []).append(recorded)
        self.head_position = position
        self._erased |= erase

    async def append(
        self,
        stream_id: uuid.UUID | str,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata | dict[str, Any] | None = None,
        recorded_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """See `events.port.EventLog.append`."""
        async with self.transaction() as tx:
            recorded = tx.append(
                stream_id,
                new_events,
                expected_version=expected_version,
                metadata=metadata,
                recorded_at=recorded_at,
            )
        self.committed()
        return recorded

    def committed(self) -> None:
        self.wakeup.notify()

    def forget_key(self, stream_id: uuid.UUID) -> None:
        """Nothing to forget: this log keeps no data keys."""

    # ------------------------------------------------------------------ reading
    def _visible(self, recorded: RecordedEvent) -> RecordedEvent:
        return _erased(recorded) if recorded.stream_id in self._erased else recorded

    def stream(self, sid: uuid.UUID) -> list[RecordedEvent]:
        """The stream's committed events, as read."""
        return [self._visible(e) for e in self._streams.get(sid, [])]

    async def stream_version(self, stream_id: uuid.UUID | str) -> int:
        return len(self._streams.get(checks.stream_uuid(stream_id, "stream id"), []))

    async def read_stream(
        self,
        stream_id: uuid.UUID | str,
        *,
        to_version: int | None = None,
        until: datetime | None = None,
        after_version: int | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        sid = checks.stream_uuid(stream_id, "stream id")
        if until is not None and until.tzinfo is None:
            raise InvalidEventError("until must be timezone-aware")
        found = [
            e
            for e in self._streams.get(sid, [])
            if (to_version is None or e.stream_version <= to_version)
            and (after_version is None or e.stream_version > after_version)
            and (until is None or e.recorded_at <= until)
        ]
        return [self._visible(e) for e in found[:limit]]

    async def read_after(
        self, cursor: Cursor, *, limit: int = 1000, shards: Sequence[int] | None = None
    ) -> list[RecordedEvent]:
        start = bisect.bisect_right(
            self._log, (cursor.tx_id, cursor.position), key=lambda e: (e.tx_id, e.position)
        )
        wanted = None if shards is None else set(shards)
        found: list[RecordedEvent] = []
        for recorded in self._log[start:]:
            if len(found) == limit:
                break
            if wanted is None or shard_of(recorded.stream_id) in wanted:
                found.append(self._visible(recorded))
        return found

    async def read_after_each(
        self, cursors: Sequence[tuple[Cursor, Sequence[int]]], *, limit: int = 1000
    ) -> list[RecordedEvent]:
        found: list[RecordedEvent] = []
        for cursor, shards in cursors:
            found += await self.read_after(cursor, limit=limit, shards=shards)
        found.sort(key=lambda e: (e.tx_id, e.position))
        return found[:limit]

    async def iter_after(
        self, cursor: Cursor, *, batch_size: int = 5000, shards: Sequence[int] | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        while batch := await self.read_after(cursor, limit=batch_size, shards=shards):
            yield batch
            cursor = batch[-1].cursor

    async def head(self) -> LogHead:
        return LogHead(count=len(self._log), position=self._log[-1].position if self._log else 0)

    # ------------------------------------------------------------------ waiting
    async def wait_for_events(self, timeout: float) -> bool:
        return await self.wakeup.wait(min(timeout, self.slow_poll))

    @contextlib.asynccontextmanager
    async def listening(self, heard: Wakeup | None = None) -> AsyncIterator[bool]:
        """No other process writes to this log: the in-process signal is enough."""
        yield False
