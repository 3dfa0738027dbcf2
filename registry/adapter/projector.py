"""`run_projector`: project the log into an app's models inside its lifespan.

@asynccontextmanager
async def lifespan(app: FastAPI):
    async with run_projector(engine, User, OAuthAccount):
        yield
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from projections.worker import ProjectionWorker
from registry.bootstrap import Container, OAuthModel, UserModel, container_for
from registry.schema import ensure_schema
from registry.settings import Settings, get_settings

log = logging.getLogger("registry.adapter.projector")

#: how long `run_projector` waits for its worker to take partitions before yielding anyway
READY_TIMEOUT = 10.0


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("projector stopped on an error", exc_info=task.exception())


@contextlib.asynccontextmanager
async def run_projector(
    engine: AsyncEngine,
    user_table: UserModel,
    oauth_table: OAuthModel | None = None,
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
    container = container_for(engine, settings or get_settings(), user_table, oauth_table)
    async with projecting(container, migrate=migrate) as worker:
        yield worker


@contextlib.asynccontextmanager
async def projecting(
    container: Container, *, migrate: bool = True
) -> AsyncIterator[ProjectionWorker]:
    """`run_projector` for a container from the composition root (`registry serve`,
    `registry worker`)."""
    # the master key is checked first: a wrong or missing one changes nothing, schema included
    await container.start()
    await ensure_schema(
        container.engine, container.user_table, container.oauth_table, migrate=migrate
    )
    worker = container.worker()
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
        await worker.shut_down(task, grace=container.settings.lease_ttl + 5)
