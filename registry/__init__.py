"""The write side and entry points of the event-sourced user registry.

from registry import EventSourcedUserDatabase, run_projector
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.adapter import EventSourcedUserDatabase
    from registry.adapter.projector import run_projector

__all__ = ["EventSourcedUserDatabase", "run_projector"]


# PEP 562: the adapter pulls in SQLAlchemy's ORM, FastAPI Users and the projections (about a
# second); `import registry`, which every CLI command does, stays at a few milliseconds
def __getattr__(name: str) -> object:
    if name == "EventSourcedUserDatabase":
        from registry.adapter import EventSourcedUserDatabase  # noqa: PLC0415 lazy, see above

        return EventSourcedUserDatabase
    if name == "run_projector":
        from registry.adapter.projector import run_projector  # noqa: PLC0415 lazy, see above

        return run_projector
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
