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

from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from projections.users import UserProjection
from projections.worker import ProjectionWorker
from registry.schema import ensure_schema
from registry.settings import Settings, get_settings

log = logging.getLogger("registry.lifespan")

#: how long `run_projector` waits for its worker to take partitions before yielding anyway
READY_TIMEOUT = 10.0


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
        max_attempts=settings.projection_max_attempts,
        retry_backoff=settings.projection_retry_backoff,
        retry_backoff_max=settings.projection_retry_backoff_max,
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
        # the read model is built anew from the models: an existing table may lack columns
        await ensure_schema(
            container.engine,
            container.user_table,
            container.oauth_table,
            complete_columns=False,
        )
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
