"""The user projection's event handlers: fold a stream's events into the net change of its rows.

One handler per event type. Each applies to a `StreamChange` (in memory), which the projection
then writes with a few set-based statements per batch (`projections.users`). An event at or
below the stream's applied version is skipped, so applying anything twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events import RecordedEvent
from events.catalog import (
    OAuthAccountLinked,
    OAuthAccountUpdated,
    UserActivated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserUnverified,
    UserVerified,
)

#: user columns a profile change may never touch (the projection owns them)
PROTECTED_USER_COLUMNS = frozenset({"id", "version", "created_at", "updated_at"})
#: OAuth columns an `OAuthAccountUpdated` may change
OAUTH_FIELDS = frozenset(
    {"oauth_name", "access_token", "expires_at", "refresh_token", "account_id", "account_email"}
)


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclass(slots=True)
class StreamChange:
    """What a batch does to one user's rows, folded in memory.

    `version` is the last applied stream version (row or tombstone); `in_db` says whether the
    user row exists in the database as loaded; `insert` holds a whole new row, `update` the
    changed columns of the existing one.
    """

    stream_id: uuid.UUID
    version: int = 0
    in_db: bool = False
    deleted: bool = False
    wipe: bool = False  # delete the existing rows (user and OAuth) before writing
    tombstone_dirty: bool = False
    insert: dict[str, Any] | None = None
    update: dict[str, Any] = field(default_factory=dict)
    oauth_insert: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    oauth_update: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    applied: int = 0  # events applied in this batch

    @property
    def live(self) -> bool:
        """A user row exists (in the database or about to be inserted)."""
        return self.insert is not None or (self.in_db and not self.deleted and not self.wipe)

    def set(self, values: dict[str, Any]) -> None:
        if self.insert is not None:
            self.insert.update(values)
        else:
            self.update.update(values)


class Folder:
    """The handlers, bound to the columns of one user (and OAuth) table."""

    def __init__(self, user_columns: frozenset[str], oauth_columns: frozenset[str] | None):
        self.profile_columns = user_columns - PROTECTED_USER_COLUMNS
        self.oauth_columns = oauth_columns
        self.handlers: dict[type, Callable[[StreamChange, Any, RecordedEvent], None]] = {
            UserRegistered: self.registered,
            UserEmailChanged: lambda s, e, r: s.set({"email": e.email}),
            UserPasswordChanged: lambda s, e, r: s.set({"hashed_password": e.hashed_password}),
            UserVerified: lambda s, e, r: s.set({"is_verified": True}),
            UserUnverified: lambda s, e, r: s.set({"is_verified": False}),
            UserActivated: lambda s, e, r: s.set({"is_active": True}),
            UserDeactivated: lambda s, e, r: s.set({"is_active": False}),
            UserSuperuserGranted: lambda s, e, r: s.set({"is_superuser": True}),
            UserSuperuserRevoked: lambda s, e, r: s.set({"is_superuser": False}),
            UserProfileUpdated: self.profile_updated,
            OAuthAccountLinked: self.oauth_linked,
            OAuthAccountUpdated: self.oauth_updated,
            UserDeleted: self.deleted,
        }

    def apply(self, change: StreamChange, recorded: RecordedEvent) -> None:
        """Fold one event into `change` (a no-op when already applied)."""
        if recorded.stream_version <= change.version:
            return
        event = recorded.event
        if isinstance(event, UserRegistered) or change.live:
            self.handlers[type(event)](change, event, recorded)
            if change.live:
                change.set({"version": recorded.stream_version, "updated_at": recorded.recorded_at})
        # events on a deleted (or never registered) stream change nothing but its version
        if change.deleted:
            change.tombstone_dirty = True
        change.version = recorded.stream_version
        change.applied += 1

    # -------------------------------------------------------------- handlers
    def registered(self, s: StreamChange, e: UserRegistered, r: RecordedEvent) -> None:
        if s.in_db and not s.deleted:
            s.wipe = True  # a second registration of one stream replaces the row
        if s.deleted:
            s.tombstone_dirty = True
        s.deleted = False
        s.update.clear()
        s.oauth_insert.clear()
        s.oauth_update.clear()
        row = {k: v for k, v in e.profile.items() if k in self.profile_columns}
        row.update(
            id=s.stream_id,
            email=e.email,
            hashed_password=e.hashed_password,
            is_active=e.is_active,
            is_superuser=e.is_superuser,
            is_verified=e.is_verified,
            created_at=r.recorded_at,
        )
        s.insert = row

    def profile_updated(self, s: StreamChange, e: UserProfileUpdated, r: RecordedEvent) -> None:
        s.set({k: v for k, v in e.changes.items() if k in self.profile_columns})

    def oauth_linked(self, s: StreamChange, e: OAuthAccountLinked, r: RecordedEvent) -> None:
        if self.oauth_columns is None:
            return
        account_id = as_uuid(e.oauth_account_id)
        s.oauth_update.pop(account_id, None)
        s.oauth_insert[account_id] = {
            "id": account_id,
            "user_id": s.stream_id,
            "oauth_name": e.oauth_name,
            "access_token": e.access_token,
            "expires_at": e.expires_at,
            "refresh_token": e.refresh_token,
            "account_id": e.account_id,
            "account_email": e.account_email,
            "link_order": r.stream_version,
        }

    def oauth_updated(self, s: StreamChange, e: OAuthAccountUpdated, r: RecordedEvent) -> None:
        if self.oauth_columns is None:
            return
        account_id = as_uuid(e.oauth_account_id)
        changes = {k: v for k, v in e.changes.items() if k in OAUTH_FIELDS}
        if account_id in s.oauth_insert:
            s.oauth_insert[account_id].update(changes)
        elif changes:
            s.oauth_update.setdefault(account_id, {}).update(changes)

    def deleted(self, s: StreamChange, e: UserDeleted, r: RecordedEvent) -> None:
        s.wipe = s.wipe or s.in_db
        s.deleted = True
        s.tombstone_dirty = True
        s.insert = None
        s.update.clear()
        s.oauth_insert.clear()
        s.oauth_update.clear()
