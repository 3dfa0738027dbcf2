"""The user projection's event handlers: fold a stream's events into the net change of its rows.

One handler per event type. Each applies to a `StreamChange` (in memory), which the projection
then writes with a few set-based statements per batch (`projections.users`). An event at or
below the stream's applied version is skipped, so applying anything twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import RecordedEvent, normalise_email
from events.catalog import (
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
)

#: user columns a profile change may never touch (the projection owns them)
PROTECTED_USER_COLUMNS = frozenset({"id", "version", "created_at", "updated_at"})
#: OAuth columns an `OAuthAccountUpdated` may change
REGISTERED = UserRegistered.event_type
ERASED = UserErased.event_type
OAUTH_FIELDS = frozenset(
    {"oauth_name", "access_token", "expires_at", "refresh_token", "account_id", "account_email"}
)


def as_uuid(value: object) -> uuid.UUID:
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

    def put(self, name: str, value: object) -> None:
        """`set` of one column (no dict built per event)."""
        if self.insert is not None:
            self.insert[name] = value
        else:
            self.update[name] = value


Handler = Callable[[StreamChange, Mapping[str, Any], int], None]

#: the events that set one user column, by type: (column, the payload field it takes or None,
#: the function the field's value goes through or the constant set). The handlers are built
#: from it, and the replay's fold (`projections.replay_fold`) sets these columns straight
#: from it.
Put = tuple[str, str | None, Any]
PUTS: dict[str, Put] = {
    # addresses in the canonical form whatever rule stored them (a replay brings rows written
    # under an older rule to the current one)
    UserEmailChanged.event_type: ("email", "email", normalise_email),
    UserPasswordChanged.event_type: ("hashed_password", "hashed_password", None),
    UserVerified.event_type: ("is_verified", None, True),
    UserUnverified.event_type: ("is_verified", None, False),
    UserActivated.event_type: ("is_active", None, True),
    UserDeactivated.event_type: ("is_active", None, False),
    UserSuperuserGranted.event_type: ("is_superuser", None, True),
    UserSuperuserRevoked.event_type: ("is_superuser", None, False),
}


def _put_handler(column: str, field: str | None, value: Any) -> Handler:  # noqa: ANN401
    """The handler of an event in `PUTS`."""
    if field is None:
        return lambda s, e, v: s.put(column, value)
    if value is None:
        return lambda s, e, v: s.put(column, e[field])
    return lambda s, e, v: s.put(column, value(e[field]))


class Folder:
    """The handlers, bound to the columns of one user (and OAuth) table.

    Handlers read the event's fields from a mapping (a live event's `__dict__`, or the stored
    payload during replay, which skips building models), keyed by event type name."""

    def __init__(self, user_columns: frozenset[str], oauth_columns: frozenset[str] | None):
        self.profile_columns = user_columns - PROTECTED_USER_COLUMNS
        self.oauth_columns = oauth_columns
        self.handlers: dict[str, Handler] = {
            UserRegistered.event_type: self.registered,
            **{name: _put_handler(*put) for name, put in PUTS.items()},
            UserProfileUpdated.event_type: self.profile_updated,
            OAuthAccountLinked.event_type: self.oauth_linked,
            OAuthAccountUpdated.event_type: self.oauth_updated,
            UserDeleted.event_type: self.deleted,
            UserErased.event_type: self.deleted,
        }

    def apply_recorded(self, change: StreamChange, recorded: RecordedEvent) -> None:
        self.apply(
            change,
            recorded.stream_version,
            recorded.event_type,
            recorded.event.__dict__,
            recorded.recorded_at,
            recorded.erased,
        )

    def apply(
        self,
        change: StreamChange,
        version: int,
        event_type: str,
        data: Mapping[str, Any],
        recorded_at: datetime,
        erased: bool = False,
    ) -> None:
        """Fold one event into `change` (a no-op when already applied). Every event of an
        erased user folds as a deletion: an erased user leaves no rows, live or replayed."""
        if version <= change.version:
            return
        if erased or event_type == ERASED:
            self.deleted(change, data, version)
        elif event_type == REGISTERED:
            self.registered(change, data, version)
            assert change.insert is not None
            change.insert["created_at"] = recorded_at
        elif change.live:
            self.handlers[event_type](change, data, version)
        if change.live:
            row = change.insert if change.insert is not None else change.update
            row["version"] = version
            row["updated_at"] = recorded_at
        elif change.deleted:
            # events on a deleted stream change nothing but its version
            change.tombstone_dirty = True
        change.version = version
        change.applied += 1

    # -------------------------------------------------------------- handlers
    def registered(self, s: StreamChange, e: Mapping[str, Any], v: int) -> None:
        if s.in_db and not s.deleted:
            s.wipe = True  # a second registration of one stream replaces the row
        if s.deleted:
            s.tombstone_dirty = True
        s.deleted = False
        s.update.clear()
        s.oauth_insert.clear()
        s.oauth_update.clear()
        profile = e.get("profile")
        row = {k: val for k, val in profile.items() if k in self.profile_columns} if profile else {}
        # one column at a time: a registration is folded for every stream of a replay
        row["id"] = s.stream_id
        row["email"] = normalise_email(e["email"])
        row["hashed_password"] = e["hashed_password"]
        row["is_active"] = e.get("is_active", True)
        row["is_superuser"] = e.get("is_superuser", False)
        row["is_verified"] = e.get("is_verified", False)
        s.insert = row

    def profile_updated(self, s: StreamChange, e: Mapping[str, Any], v: int) -> None:
        s.set({k: val for k, val in e["changes"].items() if k in self.profile_columns})

    def oauth_linked(self, s: StreamChange, e: Mapping[str, Any], v: int) -> None:
        if self.oauth_columns is None:
            return
        account_id = as_uuid(e["oauth_account_id"])
        s.oauth_update.pop(account_id, None)
        s.oauth_insert[account_id] = {
            "id": account_id,
            "user_id": s.stream_id,
            "oauth_name": e["oauth_name"],
            "access_token": e["access_token"],
            "expires_at": e.get("expires_at"),
            "refresh_token": e.get("refresh_token"),
            "account_id": e["account_id"],
            "account_email": e["account_email"],
            "link_order": v,
        }

    def oauth_updated(self, s: StreamChange, e: Mapping[str, Any], v: int) -> None:
        if self.oauth_columns is None:
            return
        account_id = as_uuid(e["oauth_account_id"])
        changes = {k: val for k, val in e["changes"].items() if k in OAUTH_FIELDS}
        if account_id in s.oauth_insert:
            s.oauth_insert[account_id].update(changes)
        elif changes:
            s.oauth_update.setdefault(account_id, {}).update(changes)

    def deleted(self, s: StreamChange, e: Mapping[str, Any], v: int) -> None:
        s.wipe = s.wipe or s.in_db
        s.deleted = True
        s.tombstone_dirty = True
        s.insert = None
        s.update.clear()
        s.oauth_insert.clear()
        s.oauth_update.clear()
