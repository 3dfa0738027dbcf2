"""Checks on an append request, before anything is written: every refusal is an
`InvalidEventError` with a precise message that never repeats a submitted value (a payload may
carry a password hash or an OAuth token)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from events.catalog import EVENT_TYPES, Event
from events.envelope import Metadata
from events.errors import InvalidEventError

MAX_EVENTS_PER_APPEND = 1000
#: `stream_version` is a 32-bit integer column
MAX_STREAM_VERSION = 2**31 - 1


def describe(exc: ValidationError) -> str:
    """A validation error as `field: problem; …`, without the offending input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    )


def stream_uuid(value: object, what: str = "stream id") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidEventError(f"{what} must be a UUID, got {value!r:.60}") from None


def expected_version(value: object, count: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidEventError(f"expected version must be a whole number >= 0, got {value!r:.60}")
    if value + count > MAX_STREAM_VERSION:
        raise InvalidEventError(
            f"expected version {value} leaves no room for {count} more event(s) "
            f"(stream versions stop at {MAX_STREAM_VERSION})"
        )
    return value


def metadata(value: object) -> Metadata:
    if isinstance(value, Metadata):
        value = value.model_dump()  # re-check: model_construct() skips validation
    try:
        return Metadata.model_validate(value or {}, strict=True)
    except ValidationError as exc:
        raise InvalidEventError(f"metadata: {describe(exc)}") from None


def recorded_at(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidEventError(f"recorded_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEventError("recorded_at must be timezone-aware")
    return value


def _fault(value: object) -> str | None:
    """Why a (python-mode) payload value cannot be stored faithfully as JSON, or None."""
    if isinstance(value, str):
        return "text may not contain NUL characters (\\u0000)" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "the payload is not JSON (NaN or infinity)"
    if isinstance(value, dict):
        return next(filter(None, (_fault(k) or _fault(v) for k, v in value.items())), None)
    if isinstance(value, (list, tuple)):
        return next(filter(None, (_fault(v) for v in value)), None)
    return None


def payload(item: Event) -> dict[str, Any]:
    """The JSON payload to store for `item`, once it is known to match its model exactly."""
    cls = type(item)
    name = cls.event_type
    try:
        # frozen models can still be built with model_construct(): validate what is stored,
        # strictly, so that nothing is coerced on the way into the log
        plain = item.model_dump(warnings=False)
        cls.model_validate(plain, strict=True)
        fault = _fault(plain)
        data: dict[str, Any] = item.model_dump(mode="json", warnings=False)
        # what PostgreSQL's JSONB and SQLite's JSON both accept: valid UTF-8
        json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValidationError as exc:
        raise InvalidEventError(f"{name}: {describe(exc)}") from None
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise InvalidEventError(f"{name}: the payload is not JSON ({exc})") from None
    if fault is not None:
        raise InvalidEventError(f"{name}: {fault}")
    return data


def events_and_payloads(new_events: object) -> list[tuple[Event, dict[str, Any]]]:
    """The events of an append, each with its payload; refuses the whole batch on any fault."""
    if isinstance(new_events, (Event, str, bytes, Mapping)) or not isinstance(new_events, Iterable):
        raise InvalidEventError(
            f"pass a sequence of events, not a single {type(new_events).__name__}"
        )
    new_events = list(new_events)
    if not new_events:
        raise InvalidEventError("an append needs at least one event")
    if len(new_events) > MAX_EVENTS_PER_APPEND:
        raise InvalidEventError(f"at most {MAX_EVENTS_PER_APPEND} events per append")
    out = []
    for item in new_events:
        if not isinstance(item, Event):
            raise InvalidEventError(f"not an event of the catalog: a {type(item).__name__}")
        cls = type(item)
        name = getattr(cls, "event_type", None)
        if not isinstance(name, str) or EVENT_TYPES.get(name) is not cls:
            raise InvalidEventError(
                f"{cls.__qualname__} (event type {name!r}) is not an event of the catalog"
            )
        out.append((item, payload(item)))
    return out
