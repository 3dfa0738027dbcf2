"""Running projectors: `run_projector` for an app's lifespan, `run_worker` for `registry worker`.

@asynccontextmanager
async def lifespan(app: FastAPI):
    async with run_projector(engine, User, OAuthAccount):
        yield
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Connection, Table, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from projections.tables import metadata as projections_metadata
from projections.users import UserProjection, table_of
from projections.worker import ProjectionWorker
from registry.settings import Settings, get_settings

log = logging.getLogger("registry.lifespan")

#: how long `run_projector` waits for its worker to take partitions before yielding anyway
READY_TIMEOUT = 10.0
#: PostgreSQL advisory lock key held while one process creates the schema
SCHEMA_LOCK_KEY = 0x7265_6769_7374


def _bookkeeping_tables() -> list[Table]:
    """The projector's own tables (not the default user/oauth_account models)."""
    from projections.models import OAuthAccount, User

    models = {table_of(User).name, table_of(OAuthAccount).name}
    return [t for t in projections_metadata.sorted_tables if t.name not in models]


def _create(sync_conn: Connection, tables: list[Table]) -> None:
    """create_all for `tables`, then add the nullable columns an existing table lacks (an
    app's custom columns on a table created earlier from the default model)."""
    for table in tables:
        table.create(sync_conn, checkfirst=True)
        have = {c["name"] for c in inspect(sync_conn).get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable or column.primary_key:
                raise RuntimeError(
                    f"table {table.name!r} exists without column {column.name!r}, which is "
                    "NOT NULL: add it with a migration"
                )
            prep = sync_conn.dialect.identifier_preparer
            ddl = column.type.compile(dialect=sync_conn.dialect)
            sync_conn.execute(
                text(
                    f"ALTER TABLE {prep.format_table(table)} "
                    f"ADD COLUMN {prep.format_column(column)} {ddl}"
                )
            )


def _made_without_alembic(sync_conn: Connection) -> bool:
    """The log exists but Alembic never ran here (tables made with create_all): leave the
    schema's management to whoever made it and only add what is missing."""
    insp = inspect(sync_conn)
    return bool(insp.has_table("events") and not insp.has_table("alembic_version"))


async def ensure_schema(
    engine: AsyncEngine, user_table: Any, oauth_table: Any = None, *, migrate: bool = True
) -> None:
    """The registry's tables (Alembic), the projector's bookkeeping, and the app's models."""
    from registry.schema import migrate as alembic_migrate

    tables = [*_bookkeeping_tables(), table_of(user_table)]
    if oauth_table is not None:
        tables.append(table_of(oauth_table))
    is_pg = engine.dialect.name == "postgresql"
    async with contextlib.AsyncExitStack() as stack:
        if is_pg:  # one process at a time (several workers may start together)
            lock = await stack.enter_async_context(engine.connect())
            await lock.execute(text(f"SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})"))
            await lock.commit()
        if migrate:
            async with engine.connect() as conn:
                migrate = not await conn.run_sync(_made_without_alembic)
        for attempt in range(3):
            try:
                if migrate:
                    await alembic_migrate(engine)
                async with engine.begin() as conn:
                    await conn.run_sync(_create, tables)
                break
            except Exception:
                if attempt == 2:  # SQLite: another process created a table at the same time
                    raise
                await asyncio.sleep(0.2)
        if is_pg:
            await lock.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})"))
            await lock.commit()


def make_worker(
    engine: AsyncEngine,
    user_table: Any,
    oauth_table: Any = None,
    *,
    settings: Settings,
    worker_id: str | None = None,
) -> ProjectionWorker:
    return ProjectionWorker(
        engine,
        EventStore(engine),
        UserProjection(user_table, oauth_table),
        partitions=settings.projection_partitions,
        batch_size=settings.projection_batch_size,
        lease_ttl=settings.lease_ttl,
        worker_id=worker_id,
    )


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("projector stopped on an error", exc_info=task.exception())


@contextlib.asynccontextmanager
async def run_projector(
    engine: AsyncEngine,
    user_table: Any,
    oauth_table: Any = None,
    *,
    migrate: bool = True,
    settings: Settings | None = None,
) -> AsyncIterator[ProjectionWorker]:
    """Project the log into `user_table` (and `oauth_table`) in this process until the block
    exits. With `migrate` (the default) the registry's tables and the app's model tables are
    created when missing first. Several processes may each run one: they share partitions.

    Encryption of personal data is turned on for `engine` from settings (the master key, the
    model's columns marked `info={"personal": True}`) unless the app attached a Crypto itself;
    raises `MasterKeyError` before projecting anything when the master key is wrong or missing.
    """
    from registry.keys import enable

    settings = settings or get_settings()
    # the master key is checked first: a wrong or missing one changes nothing, schema included
    await enable(engine, settings, user_table, oauth_table)
    await ensure_schema(engine, user_table, oauth_table, migrate=migrate)
    worker = make_worker(engine, user_table, oauth_table, settings=settings)
    task = worker.task = asyncio.create_task(worker.run(), name="projector")
    task.add_done_callback(_report_crash)
    # yield once the projector holds its partitions, so that reads right after start-up are
    # served (bounded: a slow database must not block the app's start for long)
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({ready, task}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    try:
        yield worker
    finally:
        # a crash was reported by _report_crash; a worker that does not end lets its leases expire
        await worker.shut_down(task, grace=settings.lease_ttl + 5)


async def run_worker(settings: Settings, *, migrate: bool = True) -> None:
    """`registry worker`: project until SIGTERM or SIGINT, then release the leases and exit."""
    from registry.bootstrap import build

    container = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with run_projector(
            container.engine,
            container.user_table,
            container.oauth_table,
            migrate=migrate,
            settings=settings,
        ) as worker:
            waiter = asyncio.create_task(stop.wait())
            projector = worker.task
            assert projector is not None
            await asyncio.wait({waiter, projector}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if projector.done() and not projector.cancelled() and projector.exception():
                raise projector.exception()  # type: ignore[misc]
            log.info("shutting down", extra={"worker": worker.worker_id})
    finally:
        await container.aclose()


async def run_replay(
    settings: Settings,
    *,
    in_place: bool = False,
    abandon: bool = False,
    batch_size: int = 10_000,
    jobs: int = 1,
) -> str:
    """`registry replay`: rebuild the user projection with a progress bar (events/s, ETA)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from projections.replay import Replay
    from registry.bootstrap import build

    container = build(settings)
    try:
        await container.encrypt()
        await ensure_schema(container.engine, container.user_table, container.oauth_table)
        job_args: dict[str, Any] = {
            "in_place": in_place,
            "partitions": settings.projection_partitions,
            "batch_size": batch_size,
            "jobs": jobs,
        }
        if jobs > 1 and container.engine.dialect.name != "postgresql":
            log.warning("--jobs needs PostgreSQL: replaying in one process")
        projection = UserProjection(container.user_table, container.oauth_table)
        if abandon:
            found = await Replay(container.engine, projection, **job_args).abandon()
            return "replay abandoned" if found else "no replay in progress"
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9,.0f} events/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with bar:
            task = bar.add_task("replay", total=None, rate=0.0)

            def show(p: Any) -> None:
                bar.update(task, description=p.phase, completed=p.done, total=p.total, rate=p.rate)

            result = await Replay(container.engine, projection, on_progress=show, **job_args).run()
        mode = "rebuilt in place" if in_place else "swapped in"
        return (
            f"replayed {result.events} events in {result.seconds:.1f}s "
            f"({result.rate:,.0f} events/s); {result.users} users; {mode}"
        )
    finally:
        await container.aclose()
