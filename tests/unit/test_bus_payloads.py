"""The bus's payload checks that need no broker: the nesting scan."""

from __future__ import annotations

import json
import uuid

from registry.bus.payloads import MAX_DEPTH, too_deep


def test_nesting_limit_ignores_brackets_in_strings() -> None:
    assert not too_deep(json.dumps({"s": "[" * 10_000, "id": str(uuid.uuid4())}).encode())
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert too_deep(b'{"a": "\\"[", "b": ' + b"{" * 40 + b"}" * 40 + b"}")
