"""What is shared per database engine within one process, in one place: `scope_of(engine)`.

Several objects on one engine must see the same state: every `EventStore` shares one commit
signal (a writer's commit wakes an in-process projector at once), every writer on a SQLite
file queues behind one lock, and every store seals and opens with the `Crypto` attached to the
engine. `EngineScope` holds these, one per engine, looked up by the engine's sync core and held
weakly, so an engine that is dropped takes its scope with it.

The layers above keep their own per-engine state here too, without this package knowing their
types: each declares a typed `Slot` beside the code that uses it (the projections' wake-ups,
the registry's key checks and adapter runtimes) and gets its value with `scope.get(SLOT)`,
made on first use. So there is one per-engine dictionary in the process, and imports still run
`registry → projections → events` only. The registry's two slots (`registry.service.keys` and
`registry.adapter.runtime`) stay apart rather than forming one registry-level object: such an
object would have the service layer name the adapter's types.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from events.notify import Wakeup

if TYPE_CHECKING:  # crypto.py reads and sets `EngineScope.crypto`: a runtime import would cycle
    from events.crypto import Crypto

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Slot(Generic[T]):
    """A typed place in every `EngineScope` for one layer's per-engine state; `make` builds
    the value the first time an engine's scope is asked for it. Compared by identity: declare
    each slot once, at module level."""

    name: str
    make: Callable[[], T]


class EngineScope:
    """The per-engine state of this process (see the module docstring)."""

    def __init__(self, *, sqlite: bool) -> None:
        #: notified after every commit of an `EventStore` on this engine
        self.wakeup = Wakeup()
        #: SQLite allows one writer per file: writers of this process queue here instead of
        #: meeting "database is locked" (None elsewhere)
        self.write_lock: asyncio.Lock | None = asyncio.Lock() if sqlite else None
        #: seals and opens personal data (`events.crypto.attach`); None: stored in clear
        self.crypto: Crypto | None = None
        self._slots: dict[Slot[Any], Any] = {}

    def get(self, slot: Slot[T]) -> T:
        """The value of `slot` for this engine, made on first use."""
        if slot not in self._slots:
            self._slots[slot] = slot.make()
        return cast(T, self._slots[slot])


_SCOPES: weakref.WeakKeyDictionary[Engine, EngineScope] = weakref.WeakKeyDictionary()


def scope_of(engine: AsyncEngine) -> EngineScope:
    """The scope of `engine`, made on first use. Keyed by the sync core, so every async proxy
    of one engine shares it."""
    core = engine.sync_engine
    scope = _SCOPES.get(core)
    if scope is None:
        scope = _SCOPES[core] = EngineScope(sqlite=core.dialect.name == "sqlite")
    return scope


__all__ = ["EngineScope", "Slot", "scope_of"]
