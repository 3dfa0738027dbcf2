"""The typed reply to every command on the bus, and the one function that turns a raw message
body into a reply: size check, JSON, command model, handler. It never raises for bad input or
a refused command, because FastStream sends no reply when a subscriber raises."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError

from registry.commands import COMMANDS, Command
from registry.errors import (
    InvalidCommandError,
    PayloadTooLargeError,
    RegistryError,
    UnknownCommandError,
)

log = logging.getLogger("registry.bus")

INTERNAL_ERROR = "INTERNAL_ERROR"


class Reply(BaseModel):
    """What the consumer answers: accepted (user id, stream version) or rejected (code, message).

    `duplicate` is true when the command id was seen before: the reply is the first outcome and
    nothing new was written.
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["accepted", "rejected"]
    command: str | None = None
    command_id: str | None = None
    user_id: UUID | None = None
    version: int | None = None
    duplicate: bool = False
    code: str | None = None
    message: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @classmethod
    def rejected(
        cls, code: str, message: str, *, command: str | None, command_id: str | None
    ) -> Reply:
        return cls(
            status="rejected", command=command, command_id=command_id, code=code, message=message
        )


class OutcomeLike(Protocol):
    @property
    def user_id(self) -> UUID: ...
    @property
    def version(self) -> int: ...
    @property
    def duplicate(self) -> bool: ...


Handle = Callable[[Command], Awaitable[OutcomeLike]]


def _validation_message(exc: ValidationError) -> str:
    # never echo input values: a password may be among them
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts[:10])


def _kind(exc: BaseException) -> str:
    """An exception's type, and its cause's (`sqlalchemy` wraps the driver's), no message."""
    orig = getattr(exc, "orig", None) or exc.__cause__
    return f"{type(exc).__name__}({type(orig).__name__})" if orig else type(exc).__name__


def _reject(exc: RegistryError, name: str | None, command_id: str | None) -> Reply:
    return Reply.rejected(exc.code, exc.message, command=name, command_id=command_id)


def log_reply(reply: Reply) -> None:
    """One log line for a command's outcome: names, ids and codes only, never a payload."""
    extra: dict[str, Any] = {"command": reply.command, "command_id": reply.command_id}
    if reply.accepted:
        extra |= {
            "user_id": str(reply.user_id),
            "version": reply.version,
            "duplicate": reply.duplicate,
        }
        log.info("command accepted", extra=extra)
    elif reply.code != INTERNAL_ERROR:  # already logged where it failed
        log.info("command rejected", extra=extra | {"code": reply.code})


def parse_command(raw: bytes | str, name: str, max_bytes: int) -> Command:
    """A command from a raw body, or `InvalidCommandError` (or a subclass) saying why not."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise PayloadTooLargeError(f"payload is {size} bytes, the limit is {max_bytes}")
    cls = COMMANDS.get(name)
    if cls is None:
        raise UnknownCommandError(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCommandError("payload is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidCommandError("payload must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidCommandError(f"invalid {name} command: {_validation_message(exc)}") from None


def _peek_command_id(raw: bytes | str) -> str | None:
    """The command id of a payload that failed validation, for the reply (best effort)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("command_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= 200 else None


async def process(raw: bytes | str, name: str, handle: Handle, *, max_bytes: int) -> Reply:
    """Run one command from a raw bus message; always returns a reply, never raises for input
    or refusals (the caller logs it: `log_reply`). Unexpected failures reply INTERNAL_ERROR
    (logged here by exception type, never by message)."""
    try:
        command = parse_command(raw, name, max_bytes)
    except InvalidCommandError as exc:
        command_id = None if isinstance(exc, PayloadTooLargeError) else _peek_command_id(raw)
        return _reject(exc, name, command_id)
    try:
        outcome = await handle(command)
    except RegistryError as exc:
        return _reject(exc, name, command.command_id)
    except Exception as exc:
        # no traceback text: a driver error's message can quote the statement's parameters,
        # a password hash among them
        log.error(
            "command failed",
            extra={"command": name, "command_id": command.command_id, "error": _kind(exc)},
        )
        return Reply.rejected(
            INTERNAL_ERROR,
            "the registry could not process the command; retry with the same command_id",
            command=name,
            command_id=command.command_id,
        )
    return Reply(
        status="accepted",
        command=name,
        command_id=command.command_id,
        user_id=outcome.user_id,
        version=outcome.version,
        duplicate=outcome.duplicate,
    )
