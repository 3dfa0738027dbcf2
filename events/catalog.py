"""The event catalog: one frozen pydantic model per kind of change to a user.

Every event type has a stable `event_type` name (what is stored in the log) and a
`schema_version`. When a model changes shape, bump its version and register an upcaster in
`events.upcasting` that turns the stored old payload into the new one; stored rows are never
rewritten in place.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from events.errors import UnknownEventTypeError

JSONValue = Any  # a JSON-serialisable value (custom profile columns)


class Event(BaseModel):
    """Base of every domain event: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    #: field names whose values are secrets: never published, shown or logged
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: field names whose values are personal data: stored encrypted with the user's data key
    #: (see `events.crypto`), never published
    personal_fields: ClassVar[frozenset[str]] = frozenset()
    #: a dict field whose keys may be personal (`profile`, `changes`), and which of its keys
    #: always are; the app marks its own custom columns personal on top of these
    personal_dict: ClassVar[str | None] = None
    personal_keys: ClassVar[frozenset[str]] = frozenset()

    def redacted(self) -> dict[str, Any]:
        """The payload with secret fields replaced by ``"[redacted]"``."""
        data = self.model_dump(mode="json")
        for name in self.secret_fields:
            if data.get(name) is not None:
                data[name] = "[redacted]"
        return data


class UserRegistered(Event):
    """A user was created. v2: `password_hash` became `hashed_password` and `profile` appeared."""

    event_type: ClassVar[str] = "UserRegistered"
    schema_version: ClassVar[int] = 2
    secret_fields: ClassVar[frozenset[str]] = frozenset({"hashed_password"})
    personal_fields: ClassVar[frozenset[str]] = frozenset({"email", "hashed_password"})
    personal_dict: ClassVar[str | None] = "profile"

    email: str = Field(min_length=3, max_length=320)
    hashed_password: str = Field(max_length=1024)
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    profile: dict[str, JSONValue] = Field(default_factory=dict)


class UserEmailChanged(Event):
    event_type: ClassVar[str] = "UserEmailChanged"
    personal_fields: ClassVar[frozenset[str]] = frozenset({"email"})
    email: str = Field(min_length=3, max_length=320)


class UserPasswordChanged(Event):
    event_type: ClassVar[str] = "UserPasswordChanged"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"hashed_password"})
    personal_fields: ClassVar[frozenset[str]] = frozenset({"hashed_password"})
    hashed_password: str = Field(max_length=1024)


class UserVerified(Event):
    event_type: ClassVar[str] = "UserVerified"


class UserUnverified(Event):
    event_type: ClassVar[str] = "UserUnverified"


class UserActivated(Event):
    event_type: ClassVar[str] = "UserActivated"


class UserDeactivated(Event):
    event_type: ClassVar[str] = "UserDeactivated"


class UserSuperuserGranted(Event):
    event_type: ClassVar[str] = "UserSuperuserGranted"


class UserSuperuserRevoked(Event):
    event_type: ClassVar[str] = "UserSuperuserRevoked"


class UserProfileUpdated(Event):
    """Values of the app's custom columns changed (only the changed ones)."""

    event_type: ClassVar[str] = "UserProfileUpdated"
    personal_dict: ClassVar[str | None] = "changes"
    changes: dict[str, JSONValue] = Field(min_length=1)


#: what of an OAuth account is personal: its tokens, the provider's id and email for the user
OAUTH_PERSONAL = frozenset({"access_token", "refresh_token", "account_id", "account_email"})


class OAuthAccountLinked(Event):
    event_type: ClassVar[str] = "OAuthAccountLinked"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_token", "refresh_token"})
    personal_fields: ClassVar[frozenset[str]] = OAUTH_PERSONAL

    oauth_account_id: UUID
    oauth_name: str = Field(min_length=1, max_length=100)
    access_token: str = Field(max_length=1024)
    expires_at: int | None = None
    refresh_token: str | None = Field(default=None, max_length=1024)
    account_id: str = Field(min_length=1, max_length=320)
    account_email: str = Field(max_length=320)


class OAuthAccountUpdated(Event):
    """New values for an OAuth account's fields (only the changed ones; None is a value)."""

    event_type: ClassVar[str] = "OAuthAccountUpdated"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_token", "refresh_token"})
    personal_dict: ClassVar[str | None] = "changes"
    personal_keys: ClassVar[frozenset[str]] = OAUTH_PERSONAL

    oauth_account_id: UUID
    changes: dict[str, JSONValue] = Field(min_length=1)

    def redacted(self) -> dict[str, Any]:
        data = super().redacted()
        data["changes"] = {
            k: ("[redacted]" if k in self.secret_fields and v is not None else v)
            for k, v in self.changes.items()
        }
        return data


class UserDeleted(Event):
    event_type: ClassVar[str] = "UserDeleted"


class UserErased(Event):
    """The user's personal data was erased: their data key was destroyed in the same
    transaction, so every personal field of their events is unreadable from now on."""

    event_type: ClassVar[str] = "UserErased"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        UserRegistered,
        UserEmailChanged,
        UserPasswordChanged,
        UserVerified,
        UserUnverified,
        UserActivated,
        UserDeactivated,
        UserSuperuserGranted,
        UserSuperuserRevoked,
        UserProfileUpdated,
        OAuthAccountLinked,
        OAuthAccountUpdated,
        UserDeleted,
        UserErased,
    )
}


def event_class(event_type: str) -> type[Event]:
    """The model for a stored type name; raises `UnknownEventTypeError` for an unknown one."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventTypeError(event_type) from None
