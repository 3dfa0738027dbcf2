"""Prometheus text exposition (format 0.0.4) without a client library.

Events appended and projection lag are read from the database at scrape time, so they are
true for the whole deployment. Command outcomes are counted in this process (the bus consumer
that `registry serve` runs), through `record_command`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_lock = threading.Lock()
_outcomes: Counter[tuple[str, str, str]] = Counter()

T = TypeVar("T")
C = TypeVar("C")


def record_command(command: str, outcome: str, code: str = "") -> None:
    """Count one command outcome (`accepted`/`rejected`, with the error code if rejected)."""
    with _lock:
        _outcomes[(command, outcome, code)] += 1


def command_outcomes() -> dict[tuple[str, str, str], int]:
    with _lock:
        return dict(_outcomes)


def counting(
    name: Callable[[C], str], handle: Callable[[C], Awaitable[T]]
) -> Callable[[C], Awaitable[T]]:
    """Wrap a command handler so that each call's outcome is counted (errors re-raised)."""

    async def wrapped(command: C) -> T:
        try:
            result = await handle(command)
        except Exception as exc:  # every failure is counted, then raised as it was
            record_command(name(command), "rejected", str(getattr(exc, "code", "INTERNAL_ERROR")))
            raise
        record_command(name(command), "accepted")
        return result

    return wrapped


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


class Exposition:
    """Builds the text: each metric family once, with HELP and TYPE, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, Any], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(
    head_count: int,
    head_position: int,
    partitions: list[dict[str, Any]],
    skipped: list[dict[str, Any]] | None = None,
) -> str:
    out = Exposition()
    out.family(
        "registry_events_appended_total",
        "counter",
        "Events appended to the log (all processes).",
        [({}, head_count)],
    )
    out.family(
        "registry_log_head_position", "gauge", "Highest position in the log.", [({}, head_position)]
    )

    def per_partition(key: str) -> list[tuple[dict[str, Any], float]]:
        return [
            ({"projection": p["name"], "partition": p["partition"]}, p[key])
            for p in partitions
            if p.get(key) is not None
        ]

    out.family(
        "registry_projection_lag_events",
        "gauge",
        "Events in the log not yet projected, per projection partition.",
        per_partition("lag_events"),
    )
    out.family(
        "registry_projection_lag_seconds",
        "gauge",
        "Age of the oldest event not yet projected, per projection partition.",
        per_partition("lag_seconds"),
    )
    out.family(
        "registry_projection_checkpoint_position",
        "gauge",
        "Log position of each projection partition's checkpoint.",
        per_partition("position"),
    )
    names = sorted({p["name"] for p in partitions})
    out.family(
        "registry_projection_failed_partitions",
        "gauge",
        "Partitions stopped on an event they cannot apply (until retried or skipped).",
        [
            ({"projection": n}, sum(1 for p in partitions if p["name"] == n and p.get("failure")))
            for n in names
        ],
    )
    out.family(
        "registry_projection_partition_failed",
        "gauge",
        "1 when the projection partition is stopped on an event it cannot apply.",
        [
            ({"projection": p["name"], "partition": p["partition"]}, 1 if p.get("failure") else 0)
            for p in partitions
        ],
    )
    skips = skipped or []
    out.family(
        "registry_projection_skipped_events",
        "gauge",
        "Events operators skipped (`registry projections skip`), per projection.",
        [
            ({"projection": n}, sum(1 for s in skips if s["name"] == n))
            for n in sorted({*names, *(s["name"] for s in skips)})
        ],
    )
    out.family(
        "registry_commands_total",
        "counter",
        "Commands handled by this process, by command, outcome and error code.",
        [
            ({"command": c, "outcome": o, "code": code}, n)
            for (c, o, code), n in sorted(command_outcomes().items())
        ],
    )
    return out.text()
