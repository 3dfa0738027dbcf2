"""Alembic environment. Runs on a connection handed over by `registry.migrate` (async engines
run it through `run_sync`), or on its own from `sqlalchemy.url` for the alembic CLI."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from events.engine import create_engine
from registry.schema import target_metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # pragma: no cover - alembic CLI

    async def _main() -> None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(_main())
