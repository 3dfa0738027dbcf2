"""Operations behind the CLI commands that read or change the whole registry."""

from __future__ import annotations

from typing import Any

from events import EventStore, create_engine
from registry.schema import require_registry
from registry.settings import Settings


async def gather_status(settings: Settings) -> dict[str, Any]:
    """Event count and head position, plus projection checkpoints when they exist."""
    engine = create_engine(settings.database_url)
    try:
        await require_registry(engine)  # a new directory: say what to run, create nothing
        store = EventStore(engine)
        head = await store.head()
        report: dict[str, Any] = {
            "events": {"count": head.count, "head_position": head.position},
            "projections": [],
        }
        try:
            from projections.status import projection_status
        except ImportError:  # pragma: no cover - until the read side lands
            return report
        report["projections"] = [s.as_dict() for s in await projection_status(engine, store)]
        return report
    finally:
        await engine.dispose()
