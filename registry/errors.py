"""Errors of the write side. Each has a stable `code`, used in bus replies and API errors."""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Root of every error the registry raises on purpose."""

    code: ClassVar[str] = "REGISTRY_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCommandError(RegistryError):
    """A command that is malformed, has unknown fields or values out of range."""

    code = "INVALID_COMMAND"


class UnknownCommandError(InvalidCommandError):
    code = "UNKNOWN_COMMAND"


class PayloadTooLargeError(InvalidCommandError):
    code = "PAYLOAD_TOO_LARGE"


class EmailAlreadyRegisteredError(RegistryError):
    code = "EMAIL_ALREADY_REGISTERED"


class UserNotFoundError(RegistryError):
    code = "USER_NOT_FOUND"


class UserAlreadyExistsError(RegistryError):
    """A registration that names a user id that is already taken."""

    code = "USER_ALREADY_EXISTS"


class OAuthAccountNotFoundError(RegistryError):
    code = "OAUTH_ACCOUNT_NOT_FOUND"


class OAuthAccountAlreadyLinkedError(RegistryError):
    code = "OAUTH_ACCOUNT_ALREADY_LINKED"


class VersionConflictError(RegistryError):
    """The command's `expected_version` is not the user's current version."""

    code = "VERSION_CONFLICT"


class ProjectionTimeoutError(RegistryError):
    """The read model did not reach the needed version in time (read-your-writes)."""

    code = "PROJECTION_TIMEOUT"


class IdempotencyKeyReusedError(RegistryError):
    """A `command_id` already used for a different command (another kind, or other content):
    nothing is done. The same command again with its id returns the first outcome instead."""

    code = "IDEMPOTENCY_KEY_REUSED"
