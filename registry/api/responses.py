"""Response models of the read API. None of them has a field for a password hash or a token."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OAuthAccountOut(_Out):
    """A linked OAuth account, without its access and refresh tokens."""

    id: UUID
    oauth_name: str
    account_id: str
    account_email: str
    expires_at: int | None = None


class UserOut(_Out):
    """A user, without the password hash. `version`: the stream version this state reflects."""

    id: UUID
    email: str
    is_active: bool
    is_superuser: bool
    is_verified: bool
    version: int
    created_at: datetime | None = None
    updated_at: datetime | None = None
    profile: dict[str, Any] = Field(
        default_factory=dict, description="Values of the app's custom user columns."
    )
    oauth_accounts: list[OAuthAccountOut] = Field(default_factory=list)


class UserPageOut(_Out):
    items: list[UserOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


class HistoryEntry(_Out):
    """One event of a user's stream, its secret fields replaced by "[redacted]" (by "[erased]",
    like every personal field, once the user was erased)."""

    position: int
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int = Field(description="The schema version the event was stored with.")
    recorded_at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]


class HistoryOut(_Out):
    """One page of a user's events (`version`: the stream's current version)."""

    user_id: UUID
    version: int
    erased: bool = Field(
        default=False,
        description='The user was erased: every personal value in `events` reads "[erased]".',
    )
    events: list[HistoryEntry]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


class PartitionFailureOut(_Out):
    """The event a failed partition stopped on, and why (exception type and message)."""

    position: int
    tx_id: int
    stream_id: UUID | None = None
    stream_version: int | None = None
    event_type: str | None = None
    reason: str
    attempts: int
    worker: str | None = None
    failed_at: datetime


class PartitionOut(_Out):
    name: str
    partition: int
    tx_id: int | None = None
    position: int | None = None
    head_position: int | None = None
    lag_events: int | None = None
    lag_seconds: float | None = None
    holder: str | None = None
    lease_expires_at: datetime | None = None
    state: str = Field(
        default="ok",
        description='"failed": stopped on an event it cannot apply (`failure`) until an '
        "operator runs `registry projections retry` or `skip`.",
    )
    failure: PartitionFailureOut | None = None


class SkippedEventOut(_Out):
    """An event an operator skipped (`registry projections skip`): never applied."""

    name: str
    partition: int
    position: int
    stream_id: UUID
    stream_version: int
    event_type: str
    reason: str | None = Field(default=None, description="The failure it had, if any.")
    note: str = Field(description="Why the operator skipped it.")
    skipped_by: str
    skipped_at: datetime


class ProjectionsOut(_Out):
    events: int = Field(description="Events in the log.")
    head_position: int
    partitions: list[PartitionOut]
    skipped: list[SkippedEventOut] = Field(default_factory=list)


class HealthOut(_Out):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
