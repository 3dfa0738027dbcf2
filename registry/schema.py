"""The registry's own schema: every table it owns, and the Alembic upgrade that creates them."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def target_metadata() -> list[MetaData]:
    """Metadata of every table the migrations manage (events, read model, write side)."""
    from events.tables import metadata as events_metadata

    found = [events_metadata]
    try:  # the read side and write side register their tables as they land
        from projections.tables import metadata as projections_metadata

        found.append(projections_metadata)
    except ImportError:  # pragma: no cover
        pass
    try:
        from registry.tables import metadata as registry_metadata

        found.append(registry_metadata)
    except ImportError:  # pragma: no cover
        pass
    return found


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest). Safe to run again."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
