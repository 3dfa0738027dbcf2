"""The JSON decoder of stored payloads and sealed values: msgspec, which reads a text as
`json.loads` does (integers of any size included) several times faster, with the standard
library for the few texts msgspec refuses and `json.loads` takes (a lone surrogate escape, a
number beyond float range)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode
_Error = msgspec.DecodeError
_fallback = json.loads


def loads(text: str | bytes) -> Any:  # noqa: ANN401 - any JSON value, as json.loads returns
    """The value of one JSON text, as `json.loads` reads it."""
    try:
        return _decode(text)
    except _Error:
        return _fallback(text)


__all__ = ["loads"]
