"""The write side and entry points of the event-sourced user registry.

from registry import EventSourcedUserDatabase, run_projector
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.adapter import EventSourcedUserDatabase
    from registry.adapter.projector import run_projector

__all__ = ["EventSourcedUserDatabase", "run_projector"]


def __getattr__(name: str) -> Any:  # lazy: `import registry` stays cheap for the CLI
    if name == "EventSourcedUserDatabase":
        from registry.adapter import EventSourcedUserDatabase

        return EventSourcedUserDatabase
    if name == "run_projector":
        from registry.adapter.projector import run_projector

        return run_projector
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
