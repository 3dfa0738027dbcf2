"""The user's decision logic: fold a stream into a state, and turn a command into events.

Pure functions, no I/O. `decide` expects a command whose plain `password` was already hashed
by the handler (`hashed_password` set, `password` None) and whose profile was checked against
the user model's columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from events import (
    Event,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    RecordedEvent,
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
from registry.domain.commands import (
    Command,
    DeleteUser,
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)
from registry.errors import (
    InvalidCommandError,
    OAuthAccountAlreadyLinkedError,
    OAuthAccountNotFoundError,
    UnknownCommandError,
    UserAlreadyExistsError,
    UserNotFoundError,
)

_MISSING: Any = object()
OAUTH_FIELDS = ("access_token", "expires_at", "refresh_token", "account_id", "account_email")


@dataclass(frozen=True)
class OAuthAccountState:
    id: UUID
    oauth_name: str
    access_token: str
    expires_at: int | None
    refresh_token: str | None
    account_id: str
    account_email: str


@dataclass
class UserState:
    """A user as its stream says: `version` is the stream's head (0: no events)."""

    user_id: UUID
    version: int = 0
    exists: bool = False
    deleted: bool = False
    #: the user's personal data was erased (their data key is gone): never alive again
    erased: bool = False
    #: the stream holds a `UserErased` (a key destroyed without one gets one on erase)
    erasure_recorded: bool = False
    email: str = ""
    hashed_password: str = ""
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    profile: dict[str, Any] = field(default_factory=dict)
    #: linked accounts by id, in link order
    oauth_accounts: dict[UUID, OAuthAccountState] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.exists and not self.deleted and not self.erased

    def oauth_by_name(self, oauth_name: str, account_id: str) -> OAuthAccountState | None:
        for account in self.oauth_accounts.values():
            if account.oauth_name == oauth_name and account.account_id == account_id:
                return account
        return None


def evolve(state: UserState, event: Event) -> None:
    """Apply one event to `state` in place (the version is set by `fold`)."""
    match event:
        case UserRegistered():
            state.exists = True
            state.email = event.email
            state.hashed_password = event.hashed_password
            state.is_active = event.is_active
            state.is_superuser = event.is_superuser
            state.is_verified = event.is_verified
            state.profile = dict(event.profile)
        case UserEmailChanged():
            state.email = event.email
        case UserPasswordChanged():
            state.hashed_password = event.hashed_password
        case UserVerified() | UserUnverified():
            state.is_verified = isinstance(event, UserVerified)
        case UserActivated() | UserDeactivated():
            state.is_active = isinstance(event, UserActivated)
        case UserSuperuserGranted() | UserSuperuserRevoked():
            state.is_superuser = isinstance(event, UserSuperuserGranted)
        case UserProfileUpdated():
            state.profile.update(event.changes)
        case OAuthAccountLinked():
            _link_account(state, event)
        case OAuthAccountUpdated():
            _update_account(state, event)
        case UserDeleted():
            state.deleted = True
        case UserErased():
            state.erased = state.erasure_recorded = True


def _link_account(state: UserState, event: OAuthAccountLinked) -> None:
    state.oauth_accounts[event.oauth_account_id] = OAuthAccountState(
        id=event.oauth_account_id,
        oauth_name=event.oauth_name,
        access_token=event.access_token,
        expires_at=event.expires_at,
        refresh_token=event.refresh_token,
        account_id=event.account_id,
        account_email=event.account_email,
    )


def _update_account(state: UserState, event: OAuthAccountUpdated) -> None:
    """Apply the changes to the account's fields; an unknown account changes nothing."""
    old = state.oauth_accounts.get(event.oauth_account_id)
    if old is not None:
        changes = {k: v for k, v in event.changes.items() if k in OAUTH_FIELDS}
        state.oauth_accounts[event.oauth_account_id] = replace(old, **changes)


def fold(user_id: UUID, stream: Iterable[RecordedEvent]) -> UserState:
    """The state after a stream's events (in version order). A stream whose data key was
    destroyed (`RecordedEvent.erased`) or that holds `UserErased` folds to an erased user."""
    state = UserState(user_id=user_id)
    for recorded in stream:
        evolve(state, recorded.event)
        if recorded.erased:
            state.erased = True
        state.version = recorded.stream_version
    return state


def decide(state: UserState, command: Command) -> list[Event]:
    """The events that carry out `command` on `state`; [] when it changes nothing.

    Raises UserNotFoundError (unknown, deleted or erased user; erase: unknown only),
    UserAlreadyExistsError (register on a used id), OAuthAccountNotFoundError,
    OAuthAccountAlreadyLinkedError, InvalidCommandError.
    """
    if isinstance(command, RegisterUser):
        return _register(state, command)
    if isinstance(command, EraseUser):
        return _erase(state)
    if state.erased:
        raise UserNotFoundError(f"user {state.user_id} was erased")
    if not state.alive:
        raise UserNotFoundError(f"user {state.user_id} does not exist")
    if isinstance(command, UpdateUser):
        return _update(state, command)
    if isinstance(command, DeleteUser):
        return [UserDeleted()]
    if isinstance(command, LinkOAuthAccount):
        return _link(state, command)
    if isinstance(command, UpdateOAuthAccount):
        return _update_oauth(state, command)
    raise UnknownCommandError(f"no decision for command {type(command).__name__}")


def _register(state: UserState, command: RegisterUser) -> list[Event]:
    if state.version > 0:
        raise UserAlreadyExistsError(f"user id {state.user_id} is already taken")
    if command.hashed_password is None:
        raise InvalidCommandError("register needs a password or a hashed_password")
    return [
        UserRegistered(
            email=command.email,
            hashed_password=command.hashed_password,
            is_active=command.is_active,
            is_superuser=command.is_superuser,
            is_verified=command.is_verified,
            profile=dict(command.profile),
        )
    ]


def _erase(state: UserState) -> list[Event]:
    """Erase a live or deleted user; an erased one again changes nothing (idempotent)."""
    if state.version == 0:
        raise UserNotFoundError(f"user {state.user_id} does not exist")
    if state.erasure_recorded:
        return []
    return [UserErased()]


def _flag(current: bool, wanted: bool | None, on: Event, off: Event) -> list[Event]:
    if wanted is None or wanted == current:
        return []
    return [on if wanted else off]


def _update(state: UserState, command: UpdateUser) -> list[Event]:
    out: list[Event] = []
    if command.email is not None and command.email != state.email:
        out.append(UserEmailChanged(email=command.email))
    if command.hashed_password is not None and command.hashed_password != state.hashed_password:
        out.append(UserPasswordChanged(hashed_password=command.hashed_password))
    out += _flag(state.is_active, command.is_active, UserActivated(), UserDeactivated())
    out += _flag(
        state.is_superuser, command.is_superuser, UserSuperuserGranted(), UserSuperuserRevoked()
    )
    out += _flag(state.is_verified, command.is_verified, UserVerified(), UserUnverified())
    changes = {k: v for k, v in command.profile.items() if state.profile.get(k, _MISSING) != v}
    if changes:
        out.append(UserProfileUpdated(changes=changes))
    return out


def _link(state: UserState, command: LinkOAuthAccount) -> list[Event]:
    if state.oauth_by_name(command.oauth_name, command.account_id) is not None:
        raise OAuthAccountAlreadyLinkedError(
            f"{command.oauth_name} account {command.account_id} is already linked to this user"
        )
    if command.oauth_account_id is None:
        raise InvalidCommandError("link-oauth needs an oauth_account_id (the handler sets one)")
    if command.oauth_account_id in state.oauth_accounts:
        raise OAuthAccountAlreadyLinkedError(
            f"OAuth account id {command.oauth_account_id} is already linked"
        )
    return [
        OAuthAccountLinked(
            oauth_account_id=command.oauth_account_id,
            oauth_name=command.oauth_name,
            access_token=command.access_token.get_secret_value(),
            expires_at=command.expires_at,
            refresh_token=(
                command.refresh_token.get_secret_value() if command.refresh_token else None
            ),
            account_id=command.account_id,
            account_email=command.account_email,
        )
    ]


def _update_oauth(state: UserState, command: UpdateOAuthAccount) -> list[Event]:
    account = state.oauth_accounts.get(command.oauth_account_id)
    if account is None:
        raise OAuthAccountNotFoundError(
            f"user {state.user_id} has no OAuth account {command.oauth_account_id}"
        )
    changes: dict[str, Any] = {}
    for name in OAUTH_FIELDS:
        if name not in command.model_fields_set:
            continue
        value = getattr(command, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if name in ("access_token", "account_id", "account_email") and value is None:
            continue  # required columns: None means "not given"
        if value != getattr(account, name):
            changes[name] = value
    if "account_id" in changes:
        other = state.oauth_by_name(account.oauth_name, changes["account_id"])
        if other is not None:
            raise OAuthAccountAlreadyLinkedError(
                f"{account.oauth_name} account {changes['account_id']} is already linked"
            )
    if not changes:
        return []
    return [OAuthAccountUpdated(oauth_account_id=account.id, changes=changes)]
