"""Commands: what other code asks the registry to do. Imperative names, frozen models; the same
classes validate bus payloads and adapter calls."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Command(BaseModel):
    """Fields every command may carry.

    `command_id`: the same id twice has one effect and returns the first outcome.
    `expected_version`: the user's stream version the sender saw; a different current version
    fails with VERSION_CONFLICT and changes nothing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    name: ClassVar[str]  # the bus channel suffix: registry.users.<name>

    command_id: str | None = Field(default=None, min_length=1, max_length=200)
    expected_version: int | None = Field(default=None, ge=0)
    correlation_id: str | None = Field(default=None, max_length=200)
    causation_id: str | None = Field(default=None, max_length=200)
    actor: str | None = Field(default=None, max_length=320)


class RegisterUser(Command):
    """Create a user. Give `password` (hashed here with FastAPI Users' helper, never stored in
    clear) or an already `hashed_password`. `profile` holds the app's custom columns."""

    name: ClassVar[str] = "register"

    user_id: UUID | None = None
    email: str = Field(min_length=3, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    hashed_password: str | None = Field(default=None, min_length=1, max_length=1024)
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    profile: dict[str, Any] = Field(default_factory=dict)


class UpdateUser(Command):
    """Change a user. Fields left out (or None) are not changed."""

    name: ClassVar[str] = "update"

    user_id: UUID
    email: str | None = Field(default=None, min_length=3, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    hashed_password: str | None = Field(default=None, min_length=1, max_length=1024)
    is_active: bool | None = None
    is_superuser: bool | None = None
    is_verified: bool | None = None
    profile: dict[str, Any] = Field(default_factory=dict)


class DeleteUser(Command):
    name: ClassVar[str] = "delete"

    user_id: UUID


class EraseUser(Command):
    """Erase a user's personal data (the right to erasure): their data key is destroyed in the
    same transaction as a `UserErased` event, so every personal field of their events (email,
    password hash, OAuth tokens and account ids, personal custom columns) is unreadable from
    then on; their read-model rows and their email/OAuth reservations go, and the address can
    be registered again (as a new user). Works on a live or a deleted user; erasing an erased
    user again is accepted and changes nothing. Unknown user: USER_NOT_FOUND."""

    name: ClassVar[str] = "erase"

    user_id: UUID


class LinkOAuthAccount(Command):
    name: ClassVar[str] = "link-oauth"

    user_id: UUID
    oauth_account_id: UUID | None = None
    oauth_name: str = Field(min_length=1, max_length=100)
    access_token: SecretStr = Field(max_length=1024)
    expires_at: int | None = None
    refresh_token: SecretStr | None = Field(default=None, max_length=1024)
    account_id: str = Field(min_length=1, max_length=320)
    account_email: str = Field(max_length=320)


class UpdateOAuthAccount(Command):
    """Change fields of a linked OAuth account. Only the fields present in the payload change
    (`expires_at: null` clears it)."""

    name: ClassVar[str] = "update-oauth"

    user_id: UUID
    oauth_account_id: UUID
    access_token: SecretStr | None = Field(default=None, max_length=1024)
    expires_at: int | None = None
    refresh_token: SecretStr | None = Field(default=None, max_length=1024)
    account_id: str | None = Field(default=None, min_length=1, max_length=320)
    account_email: str | None = Field(default=None, max_length=320)


COMMANDS: dict[str, type[Command]] = {
    cls.name: cls
    for cls in (
        RegisterUser,
        UpdateUser,
        DeleteUser,
        EraseUser,
        LinkOAuthAccount,
        UpdateOAuthAccount,
    )
}
