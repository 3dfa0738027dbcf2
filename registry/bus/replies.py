"""The typed reply to every command on the bus, and the one function that turns a raw message
body into a reply: size check, JSON, command model, handler. It never raises for bad input or
a refused command, because FastStream sends no reply when a subscriber raises."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.exc import DBAPIError

from registry.bus.payloads import parse_command, peek_command_id, validation_message
from registry.domain.commands import Command
from registry.errors import InvalidCommandError, PayloadTooLargeError, RegistryError

log = logging.getLogger("registry.bus")

INTERNAL_ERROR = "INTERNAL_ERROR"
#: the namespace of command ids derived from a message's identity on the broker
#: (`bus:nats:<stream>:<created>:<seq>`, `bus:amqp:...`, `bus:redis:...`, `bus:kafka:...`)
BUS_ID_PREFIX = "bus:"
#: the longest command id the log records (`processed_commands.command_id`)
_ID_MAX = 200


def bus_id(kind: str, *parts: object) -> str:
    """A message's identity on the broker as a command id: `bus:<kind>:<part>:<part>...`,
    hashed when longer than a command id may be."""
    text = ":".join([f"{BUS_ID_PREFIX}{kind}", *(str(p) for p in parts)])
    if len(text) <= _ID_MAX:
        return text
    return f"{BUS_ID_PREFIX}{kind}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"


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


def _is_bad_input(exc: BaseException) -> bool:
    """A failure caused by the command's values rather than by the server: a model refusing
    them past parsing (an event built from the command, say), or the database refusing to
    store them (SQLSTATE class 22, data exception: out of range, invalid characters)."""
    if isinstance(exc, ValidationError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate.startswith("22")
    return False


def _bad_input_message(exc: BaseException, name: str) -> str:
    if isinstance(exc, ValidationError):
        return f"invalid {name} command: {validation_message(exc)}"
    # never the driver's message: it can quote the statement's parameters
    return f"invalid {name} command: a value cannot be stored ({_kind(exc)})"


async def process(
    raw: bytes | str,
    name: str,
    handle: Handle,
    *,
    max_bytes: int,
    bus_id: str | None = None,
) -> Reply:
    """Run one command from a raw bus message; always returns a reply, never raises for input
    or refusals (the caller logs it: `log_reply`).

    `bus_id` is the message's identity on the broker (`BUS_ID_PREFIX`...): a command without
    a `command_id` takes it as its id, so a redelivery of the same message returns the first
    outcome instead of running again. A payload may not choose an id in that namespace.

    Bad input, however it shows (parsing, the model, an event, the database refusing a value),
    replies INVALID_COMMAND; a refusal its RegistryError code; only a server fault replies
    INTERNAL_ERROR (logged here by exception type, never by message)."""
    try:
        command = parse_command(raw, name, max_bytes)
    except InvalidCommandError as exc:
        command_id = (
            None if isinstance(exc, PayloadTooLargeError) else peek_command_id(raw, max_bytes)
        )
        return _reject(exc, name, command_id)
    if command.command_id is None:
        if bus_id is not None:
            command = command.model_copy(update={"command_id": bus_id})
    elif command.command_id.startswith(BUS_ID_PREFIX):
        return Reply.rejected(
            InvalidCommandError.code,
            f"command_id may not start with {BUS_ID_PREFIX!r}: reserved for ids derived from "
            "the broker",
            command=name,
            command_id=None,
        )
    try:
        outcome = await handle(command)
    except RegistryError as exc:
        return _reject(exc, name, command.command_id)
    except Exception as exc:  # noqa: BLE001 a reply goes out whatever the handler raised
        if _is_bad_input(exc):
            return Reply.rejected(
                InvalidCommandError.code,
                _bad_input_message(exc, name),
                command=name,
                command_id=command.command_id,
            )
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
