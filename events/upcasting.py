"""Upcasters: turn a stored payload of an old schema version into the current model's shape.

An upcaster is registered for `(event_type, from_version)` and returns the payload at
`from_version + 1`; `upcast` chains them until the current version is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from events.catalog import UserRegistered, event_class
from events.errors import UnknownEventTypeError

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that lifts `event_type` payloads from `from_version` by one."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def upcast(event_type: str, schema_version: int, data: Payload) -> Payload:
    """Lift a stored payload to the current schema version of its event type."""
    current = event_class(event_type).schema_version
    if schema_version > current or schema_version < 1:
        raise UnknownEventTypeError(event_type, schema_version)
    version = schema_version
    while version < current:
        try:
            step = _UPCASTERS[(event_type, version)]
        except KeyError:
            raise UnknownEventTypeError(event_type, version) from None
        data = step(dict(data))
        version += 1
    return data


@upcaster(UserRegistered.event_type, 1)
def _user_registered_v1_to_v2(data: Payload) -> Payload:
    # v1 called the hash `password_hash` and had no custom profile columns.
    data["hashed_password"] = data.pop("password_hash")
    data.setdefault("profile", {})
    return data
