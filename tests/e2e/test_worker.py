"""`registry worker` as real processes: SIGKILLed mid-batch and restarted, the rows equal a
clean replay; on PostgreSQL a second worker takes over a killed one's partitions; SIGTERM is
a clean shutdown that releases the leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine
from projections import UserProjection
from projections.replay import replay
from projections.status import projection_status
from projections.tables import projection_leases
from tests.support.projection import (
    AppOAuth,
    AppUser,
    History,
    assert_matches_model,
    create_tables,
    snapshot,
)
from tests.support.waiting import eventually

#: the checkout, so that the workers import the test models as `tests.support.projection`
ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.e2e
USERS, ACCOUNTS = AppUser.__table__, AppOAuth.__table__


class Workers:
    def __init__(self, database_url: str, tmp: Path) -> None:
        self.env = {
            **os.environ,
            "REGISTRY_DATABASE_URL": database_url,
            "REGISTRY_PROJECTION_PARTITIONS": "4",
            "REGISTRY_PROJECTION_BATCH_SIZE": "20",
            "REGISTRY_LEASE_TTL": "1",
            "REGISTRY_LOG_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry.cli",
                "worker",
                "--no-migrate",
                "--user-model",
                "tests.support.projection:AppUser",
                "--oauth-model",
                "tests.support.projection:AppOAuth",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(database_url, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


async def lag(engine: AsyncEngine, store: EventStore) -> tuple[int, int]:
    """(events applied, events behind) over all partitions."""
    statuses = [s for s in await projection_status(engine, store) if s.name == "users"]
    head = await store.head()
    behind = sum(s.lag_events for s in statuses) if statuses else head.count
    return head.count - behind, behind


async def holders(engine: AsyncEngine) -> dict[int, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(projection_leases.c.partition, projection_leases.c.holder))
        return {partition: holder for partition, holder in rows}


async def test_worker_killed_mid_batch_restarts_to_a_clean_replay(
    engine: AsyncEngine, workers: Workers
) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    model = await History(store, seed=21).run(3000)
    first = workers.start()

    async def progressing() -> bool:
        assert first.poll() is None, "the worker exited"
        done, _ = await lag(engine, store)
        return done > 300

    await eventually(progressing, timeout=30, message="the worker to start projecting")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    _, behind = await lag(engine, store)
    assert behind > 0, "the worker finished before it could be killed: use a longer log"

    second = workers.start()

    async def finished() -> bool:
        return (await lag(engine, store))[1] == 0

    await eventually(finished, timeout=60, message="the restarted worker to catch up")
    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0  # a clean shutdown
    assert set((await holders(engine)).values()) == {None}  # leases released on the way out

    live = await snapshot(engine, USERS, ACCOUNTS)
    assert_matches_model(live, model)
    await replay(engine, UserProjection(AppUser, AppOAuth), in_place=True)
    assert await snapshot(engine, USERS, ACCOUNTS) == live


async def test_a_second_worker_takes_over_a_killed_ones_partitions(
    pg_url: str, tmp_path: Path
) -> None:
    engine = create_engine(pg_url)
    workers = Workers(pg_url, tmp_path)
    try:
        await _takeover(engine, workers)
    finally:
        workers.stop_all()
        await engine.dispose()


async def _takeover(engine: AsyncEngine, workers: Workers) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    history = History(store, seed=22)
    a, b = workers.start(), workers.start()

    async def shared() -> bool:
        return len({h for h in (await holders(engine)).values() if h}) == 2

    await eventually(shared, timeout=30, message="two workers to share the partitions")
    await history.run(500)
    victim_id = next(h for h in (await holders(engine)).values() if h)
    victim = a if f":{a.pid}:" in victim_id else b
    survivor = b if victim is a else a
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    model = await history.run(500)

    async def taken_over() -> bool:
        owners = set((await holders(engine)).values())
        return len(owners) == 1 and f":{survivor.pid}:" in str(owners.pop())

    await eventually(taken_over, timeout=15, message="the survivor to take every partition")

    async def finished() -> bool:
        return (await lag(engine, store))[1] == 0

    await eventually(finished, timeout=30, message="the survivor to catch up")
    assert_matches_model(await snapshot(engine, USERS, ACCOUNTS), model)
