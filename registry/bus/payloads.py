"""From a raw bus body to a command, refusing every malformed input with `InvalidCommandError`
(or a subclass) and never anything else: oversize, not UTF-8, not JSON, nested deeper than
`MAX_DEPTH`, a NUL character or an unpaired surrogate anywhere, a field the model refuses.

Depth is checked before `json.loads`, whose C scanner raises `RecursionError` (not a
`ValueError`) on deep input, and NUL/surrogates after it, because PostgreSQL stores neither
and would fail the command as a server fault.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

from pydantic import ValidationError

from registry.domain.commands import COMMANDS, Command
from registry.errors import InvalidCommandError, PayloadTooLargeError, UnknownCommandError

#: deepest nesting of objects/arrays a command may have (a profile of nested objects included)
MAX_DEPTH = 32
#: longest command id a reply echoes back for a payload that failed validation
_ECHO_ID_MAX = 200

#: a JSON string (the unrolled form: no alternation per character)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [1 if b in b"[{" else -1 for b in range(256)]


def validation_message(exc: ValidationError) -> str:
    """Where and why validation failed, never the input values (a password may be among
    them)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts[:10])


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether `raw` nests objects/arrays deeper than `limit` (brackets inside strings do not
    count). Free for ordinary bodies: with no more opening brackets than `limit` in all, no
    scan is needed. Otherwise the depth is the highest running sum of +1/-1 per bracket,
    computed without a Python loop per bracket (a body of many small arrays stays cheap)."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def _first_bad_char(value: object, path: str = "payload") -> str | None:
    """The path of the first string (key or value) holding NUL or an unpaired surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path}: NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path}: unpaired surrogate"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_bad_char(key, path) or _first_bad_char(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _first_bad_char(item, f"{path}.{i}"):
                return found
    return None


def _json(raw: bytes) -> object:
    if too_deep(raw):
        raise InvalidCommandError(f"payload nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidCommandError("payload is not valid UTF-8 JSON") from None


def _loads(raw: bytes) -> object:
    data = _json(raw)
    # only an escape can put NUL or a lone surrogate in a parsed string: skip the walk without
    if b"\\u" in raw and (bad := _first_bad_char(data)):
        raise InvalidCommandError(f"payload has a character that cannot be stored: {bad}")
    return data


def parse_command(raw: bytes | str, name: str, max_bytes: int) -> Command:
    """A command from a raw body, or `InvalidCommandError` (or a subclass) saying why not."""
    body = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"payload is {len(body)} bytes, the limit is {max_bytes}")
    cls = COMMANDS.get(name)
    if cls is None:
        raise UnknownCommandError(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
    data = _loads(body)
    if not isinstance(data, dict):
        raise InvalidCommandError("payload must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidCommandError(f"invalid {name} command: {validation_message(exc)}") from None


def peek_command_id(raw: bytes | str, max_bytes: int) -> str | None:
    """The command id of a payload that failed validation, for the reply (best effort: only a
    plain, storable string of a body that parses)."""
    body = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if len(body) > max_bytes:
        return None
    try:
        data = _json(body)
    except InvalidCommandError:
        return None
    value = data.get("command_id") if isinstance(data, dict) else None
    if not isinstance(value, str) or len(value) > _ECHO_ID_MAX or _first_bad_char(value):
        return None
    return value
