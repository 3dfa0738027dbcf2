"""Errors of the event log. Every error raised by `events` derives from `EventStoreError`."""

from __future__ import annotations

from uuid import UUID


class EventStoreError(Exception):
    """Root of every error the event log raises."""


class ConcurrencyError(EventStoreError):
    """An append stated a stream version that is no longer (or not yet) the stream's head."""

    def __init__(self, stream_id: UUID, expected_version: int, actual_version: int | None) -> None:
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        actual = "unknown" if actual_version is None else str(actual_version)
        super().__init__(
            f"stream {stream_id}: expected version {expected_version}, "
            f"but the stream is at version {actual}; nothing was appended"
        )


class UnknownEventTypeError(EventStoreError):
    """An event type name (or schema version) that this catalog does not know."""

    def __init__(self, event_type: str, schema_version: int | None = None) -> None:
        self.event_type = event_type
        self.schema_version = schema_version
        where = "" if schema_version is None else f" (schema version {schema_version})"
        super().__init__(f"unknown event type {event_type!r}{where}")


class InvalidEventError(EventStoreError):
    """An event or an append request that does not match its model; nothing was written."""


class CorruptEventError(EventStoreError):
    """A stored event whose payload (after upcasting) does not match its model."""

    def __init__(self, position: int, event_type: str, schema_version: int, problem: str) -> None:
        self.position = position
        self.event_type = event_type
        self.schema_version = schema_version
        super().__init__(
            f"stored event at position {position} ({event_type!r}, schema version "
            f"{schema_version}) does not match its model: {problem}"
        )
