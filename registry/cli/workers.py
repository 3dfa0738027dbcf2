"""`registry worker` and `registry replay`: the projector processes."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from projections.replay import Progress as ReplayProgress
from projections.replay import Replay
from registry.adapter.projector import projecting
from registry.bootstrap import running
from registry.cli.common import EXIT_USAGE, fail, load_settings, run, with_models
from registry.logs import configure_logging
from registry.schema import ensure_schema
from registry.settings import Settings

log = logging.getLogger("registry.workers")


async def run_worker(settings: Settings, *, migrate: bool = True) -> None:
    """`registry worker`: project until SIGTERM or SIGINT, then release the leases and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as container, projecting(container, migrate=migrate) as worker:
        waiter = asyncio.create_task(stop.wait())
        projector = worker.task
        assert projector is not None
        await asyncio.wait({waiter, projector}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if projector.done() and not projector.cancelled():
            crash = projector.exception()
            if crash is not None:
                raise crash
        log.info("shutting down", extra={"worker": worker.worker_id})


async def run_replay(
    settings: Settings,
    *,
    in_place: bool = False,
    abandon: bool = False,
    batch_size: int = 10_000,
    jobs: int = 1,
) -> str:
    """`registry replay`: rebuild the user projection with a progress bar (events/s, ETA)."""
    async with running(settings) as container:
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
        projection = container.projection()
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

            def show(p: ReplayProgress) -> None:
                bar.update(task, description=p.phase, completed=p.done, total=p.total, rate=p.rate)

            result = await Replay(container.engine, projection, on_progress=show, **job_args).run()
        mode = "rebuilt in place" if in_place else "swapped in"
        return (
            f"replayed {result.events} events in {result.seconds:.1f}s "
            f"({result.rate:,.0f} events/s); {result.users} users; {mode}"
        )


@click.command()
@click.option("--user-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_USER_MODEL]")
@click.option("--oauth-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_OAUTH_MODEL]")
@click.option("--no-migrate", is_flag=True, help="Do not create missing tables first.")
def worker(user_model: str | None, oauth_model: str | None, no_migrate: bool) -> None:
    """Run a projector worker until SIGTERM or Ctrl+C. Run several: they share the
    partitions (REGISTRY_PROJECTION_PARTITIONS) and take over from one that dies."""
    settings = with_models(load_settings(), user_model, oauth_model)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run(lambda: run_worker(settings, migrate=not no_migrate))
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"worker failed: {exc}")


@click.command()
@click.argument("projection", default="users")
@click.option("--in-place", is_flag=True, help="Rebuild the live tables (offline: no workers).")
@click.option("--abandon", is_flag=True, help="Drop an interrupted replay's tables and stop.")
@click.option("--batch-size", type=int, default=10_000, show_default=True)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes that share the bulk phase (PostgreSQL; about one core each).",
)
@click.option("--user-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_USER_MODEL]")
@click.option("--oauth-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_OAUTH_MODEL]")
def replay(
    projection: str,
    in_place: bool,
    abandon: bool,
    batch_size: int,
    jobs: int,
    user_model: str | None,
    oauth_model: str | None,
) -> None:
    """Rebuild PROJECTION from the log into new tables while the live ones keep serving, then
    swap them in atomically (blue/green). An interrupted replay resumes when run again."""
    if projection != "users":
        fail(f"unknown projection {projection!r} (known: users)", EXIT_USAGE)
    settings = with_models(load_settings(), user_model, oauth_model)
    try:
        message = run(
            lambda: run_replay(
                settings, in_place=in_place, abandon=abandon, batch_size=batch_size, jobs=jobs
            )
        )
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"replay failed: {exc}")
    click.echo(message)
