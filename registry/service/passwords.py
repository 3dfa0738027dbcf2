"""Preparing a command for the decision: hash a plain password, check the profile keys.

A plain `password` is hashed with FastAPI Users' `PasswordHelper` (Argon2) in a worker thread
and dropped from the command; only the hash goes further (into the log, where it is a secret
field that is redacted wherever events are shown or published).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pydantic_core import PydanticSerializationError, to_jsonable_python

from registry.domain.commands import Command, RegisterUser, UpdateUser
from registry.errors import InvalidCommandError

#: fields of every user that are not "profile" (custom columns)
BUILTIN_USER_FIELDS = frozenset(
    {"id", "email", "hashed_password", "is_active", "is_superuser", "is_verified"}
)


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...


_default_helper: PasswordHasher | None = None


def default_password_helper() -> PasswordHasher:
    """FastAPI Users' PasswordHelper (Argon2, verifies bcrypt too), built once."""
    global _default_helper
    if _default_helper is None:
        # fastapi_users' package imports FastAPI: loaded only when a password is hashed
        from fastapi_users.password import PasswordHelper  # noqa: PLC0415 heavy, see above

        _default_helper = PasswordHelper()
    return _default_helper


def check_profile(profile: dict[str, Any], allowed: frozenset[str] | None) -> dict[str, Any]:
    """The profile as JSON values; InvalidCommandError for a key that is not a custom column."""
    builtin = sorted(set(profile) & (BUILTIN_USER_FIELDS | {"password", "oauth_accounts"}))
    if builtin:
        raise InvalidCommandError(f"profile cannot set built-in fields: {', '.join(builtin)}")
    if allowed is not None:
        unknown = sorted(set(profile) - allowed)
        if unknown:
            raise InvalidCommandError(
                f"not columns of the user model: {', '.join(unknown)}"
                + (f" (custom columns: {', '.join(sorted(allowed))})" if allowed else "")
            )
    try:
        value = to_jsonable_python(profile)
    except PydanticSerializationError as exc:
        raise InvalidCommandError(f"profile values must be JSON-serialisable: {exc}") from None
    assert isinstance(value, dict)
    return value


async def prepare(
    command: Command, profile_fields: frozenset[str] | None, helper: PasswordHasher | None
) -> Command:
    """The command with its password hashed and its profile checked (nothing else changes)."""
    if not isinstance(command, Command):
        raise InvalidCommandError(f"not a command: {type(command).__name__}")
    if not isinstance(command, RegisterUser | UpdateUser):
        return command
    update: dict[str, Any] = {}
    if command.profile:
        update["profile"] = check_profile(command.profile, profile_fields)
    if command.password is not None:
        if command.hashed_password is not None:
            raise InvalidCommandError("give either password or hashed_password, not both")
        hasher = helper or default_password_helper()
        secret = command.password.get_secret_value()
        update["hashed_password"] = await asyncio.to_thread(hasher.hash, secret)
        update["password"] = None
    return command.model_copy(update=update) if update else command
