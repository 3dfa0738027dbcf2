"""The envelope around an event: where it sits in the log and why it was written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import Event


class Metadata(BaseModel):
    """Why an event was written: the command, the conversation and who asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str | None = Field(default=None, max_length=200)
    correlation_id: str | None = Field(default=None, max_length=200)
    causation_id: str | None = Field(default=None, max_length=200)
    actor: str | None = Field(default=None, max_length=320)
    imported: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True, slots=True)
class Cursor:
    """A reader's place in the log: everything at or below `(tx_id, position)` was read.

    On PostgreSQL `tx_id` is the id of the transaction that wrote the event, so the log is read
    in commit-safe order (see `EventStore.read_after`); on SQLite it is always 0.
    """

    tx_id: int = 0
    position: int = 0

    @classmethod
    def start(cls) -> Cursor:
        return cls(0, 0)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its place in the log, its stream, and the (upcast) event itself."""

    position: int
    tx_id: int
    stream_id: UUID
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int  # the version it was stored with; `event` is always current
    event: Event
    metadata: Metadata
    recorded_at: datetime
    #: the user was erased: the event's personal fields read "[erased]" (their key is gone)
    erased: bool = False

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.tx_id, self.position)

    @property
    def shard(self) -> int:
        return shard_of(self.stream_id)


SHARDS = 256


def shard_of(stream_id: UUID) -> int:
    """The stream's shard (0..255): projection partitions are unions of shards."""
    return stream_id.int % SHARDS
