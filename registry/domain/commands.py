"""Commands: what other code asks the registry to do. Imperative names, frozen models; the same
classes validate bus payloads and adapter calls."""

from __future__ import annotations

from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, StrictInt

from registry.domain.fields import (
    INT32_MAX,
    NO_NUL,
    PLAIN,
    SECRET_PLAIN,
    EmailAddress,
    Int32,
    Profile,
)

Password = Annotated[SecretStr, Field(min_length=1, max_length=1024), NO_NUL]
Hash = Annotated[str, Field(min_length=1, max_length=1024), PLAIN]
Token = Annotated[SecretStr, Field(max_length=1024), SECRET_PLAIN]
AccountId = Annotated[str, Field(min_length=1, max_length=320), PLAIN]
AccountEmail = Annotated[str, Field(max_length=320), PLAIN]


class Command(BaseModel):
    """Fields every command may carry.

    `command_id`: the same id twice has one effect and returns the first outcome.
    `expected_version`: the user's stream version the sender saw; a different current version
    fails with VERSION_CONFLICT and changes nothing.

    Every field is checked before anything runs (`registry.domain.fields`): no NUL, control
    character or lone surrogate in a stored string, the email rule (`events.emails`) on addresses,
    strict booleans and integers. A refusal is INVALID_COMMAND on the bus and
    `InvalidCommandError` from the adapter; nothing is written.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    name: ClassVar[str]  # the bus channel suffix: registry.users.<name>

    command_id: Annotated[str, Field(min_length=1, max_length=200), PLAIN] | None = None
    expected_version: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] | None = None
    correlation_id: Annotated[str, Field(max_length=200), PLAIN] | None = None
    causation_id: Annotated[str, Field(max_length=200), PLAIN] | None = None
    actor: Annotated[str, Field(max_length=320), PLAIN] | None = None


class RegisterUser(Command):
    """Create a user. Give `password` (hashed here with FastAPI Users' helper, never stored in
    clear) or an already `hashed_password`. `profile` holds the app's custom columns.
    `email` is stored in its canonical form (`events.emails`: trimmed, NFC, lower-cased)."""

    name: ClassVar[str] = "register"

    user_id: UUID | None = None
    email: EmailAddress
    password: Password | None = None
    hashed_password: Hash | None = None
    is_active: StrictBool = True
    is_superuser: StrictBool = False
    is_verified: StrictBool = False
    profile: Profile = Field(default_factory=dict)


class UpdateUser(Command):
    """Change a user. Fields left out (or None) are not changed."""

    name: ClassVar[str] = "update"

    user_id: UUID
    email: EmailAddress | None = None
    password: Password | None = None
    hashed_password: Hash | None = None
    is_active: StrictBool | None = None
    is_superuser: StrictBool | None = None
    is_verified: StrictBool | None = None
    profile: Profile = Field(default_factory=dict)


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
    """Link an OAuth account. `account_email` is kept as the provider gave it (control
    characters refused): the registry looks nothing up by it, and FastAPI Users' OAuth
    callback passes it through `get_by_email` / `create`, where the email rule applies."""

    name: ClassVar[str] = "link-oauth"

    user_id: UUID
    oauth_account_id: UUID | None = None
    oauth_name: Annotated[str, Field(min_length=1, max_length=100), PLAIN]
    access_token: Token
    expires_at: Int32 | None = None
    refresh_token: Token | None = None
    account_id: AccountId
    account_email: AccountEmail


class UpdateOAuthAccount(Command):
    """Change fields of a linked OAuth account. Only the fields present in the payload change
    (`expires_at: null` clears it)."""

    name: ClassVar[str] = "update-oauth"

    user_id: UUID
    oauth_account_id: UUID
    access_token: Token | None = None
    expires_at: Int32 | None = None
    refresh_token: Token | None = None
    account_id: AccountId | None = None
    account_email: AccountEmail | None = None


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
