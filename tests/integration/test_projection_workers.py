"""Several projector workers on PostgreSQL: every event applied exactly once, rows equal to a
replay, a dead worker's partitions taken over; and the out-of-order commit case."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import EventStore, RecordedEvent, UserEmailChanged, UserRegistered, create_engine
from projections import UserProjection
from projections.errors import ProjectionTimeout
from projections.replay import replay
from projections.worker import ProjectionWorker, wait_for_version
from tests.support.projection import (
    AppOAuth,
    AppUser,
    History,
    assert_matches_model,
    create_tables,
    running,
    snapshot,
)
from tests.support.waiting import eventually

USERS, ACCOUNTS = AppUser.__table__, AppOAuth.__table__

counting = MetaData()
applied = Table(
    "test_applied",
    counting,
    Column("position", BigInteger, nullable=False),  # no unique index: duplicates must show
    Column("worker", String(200), nullable=False),
)


class Counting:
    """The user projection, recording each applied position in the same transaction."""

    def __init__(self, inner: UserProjection, worker: str) -> None:
        self.inner, self.name, self.worker = inner, inner.name, worker

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        rows = [{"position": r.position, "worker": self.worker} for r in batch]
        await conn.execute(insert(applied), rows)
        await self.inner.handle(conn, batch)


async def applied_counts(engine: AsyncEngine) -> tuple[int, int, dict[str, int]]:
    async with engine.connect() as conn:
        total, distinct = (
            await conn.execute(select(func.count(), func.count(func.distinct(applied.c.position))))
        ).one()
        per = await conn.execute(select(applied.c.worker, func.count()).group_by(applied.c.worker))
        return int(total), int(distinct), {w: int(n) for w, n in per}


async def exactly_once(
    engine: AsyncEngine, store: EventStore, timeout: float = 30
) -> dict[str, int]:
    async def all_applied() -> dict[str, int] | None:
        total, distinct, per = await applied_counts(engine)
        head = await store.head()
        assert total == distinct, f"{total - distinct} events applied twice"
        return per if total == head.count else None

    return await eventually(all_applied, timeout=timeout, message="every event applied once")


@pytest.mark.parametrize("workers", [2, 4])
async def test_workers_share_a_growing_log_exactly_once(pg_url: str, workers: int) -> None:
    engines = [create_engine(pg_url, pool_size=3) for _ in range(workers + 1)]
    main = engines[0]
    try:
        await create_tables(main)
        async with main.begin() as conn:
            await conn.run_sync(counting.create_all)
        store = EventStore(main)
        projection = UserProjection(AppUser, AppOAuth)
        pool = [
            ProjectionWorker(
                eng,
                EventStore(eng),
                Counting(projection, f"w{i}"),
                partitions=4,
                batch_size=25,
                lease_ttl=1.2,
                worker_id=f"w{i}",
            )
            for i, eng in enumerate(engines[1:])
        ]
        tasks = {w.worker_id: asyncio.create_task(w.run()) for w in pool}
        try:
            # fair shares settle within a few TTLs
            await eventually(
                lambda: all(w.held for w in pool), timeout=10, message="every worker to hold leases"
            )
            history = History(store, seed=11 + workers)
            await history.run(800)
            per = await exactly_once(main, store)
            assert len(per) == workers, per  # the work was shared

            # one worker dies without releasing its leases: the others take over
            victim = max(pool, key=lambda w: len(w.held))
            held = set(victim.held)
            assert held
            # the worker dies without releasing its leases
            victim._leave = _no_leave  # type: ignore[method-assign]  # noqa: SLF001
            tasks.pop(victim.worker_id).cancel()
            started = time.monotonic()
            model = await history.run(400)
            await exactly_once(main, store)
            assert time.monotonic() - started < 15
            survivors = set().union(*(w.held for w in pool if w is not victim))
            assert held <= survivors
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        live = await snapshot(main, USERS, ACCOUNTS)
        assert_matches_model(live, model)
        await replay(main, projection)
        assert await snapshot(main, USERS, ACCOUNTS) == live
    finally:
        for eng in engines:
            await eng.dispose()


async def _no_leave() -> None:  # a crashed worker releases nothing
    return None


async def test_a_slow_transactions_event_reaches_the_read_model(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        await create_tables(engine)
        store = EventStore(engine)
        projection = UserProjection(AppUser, AppOAuth)
        worker = ProjectionWorker(engine, store, projection, partitions=1, lease_ttl=2)
        slow_user, fast_user = uuid.uuid4(), uuid.uuid4()
        async with running(worker):
            await store.append(
                slow_user, [UserRegistered(email="s@x.io", hashed_password="h")], expected_version=0
            )
            await wait_for_version(engine, projection, slow_user, 1, 5)
            async with engine.connect() as slow:
                # takes its position (and transaction id) first, commits last
                await store.append(
                    slow_user, [UserEmailChanged(email="slow@x.io")], expected_version=1, conn=slow
                )
                await store.append(
                    fast_user,
                    [UserRegistered(email="f@x.io", hashed_password="h")],
                    expected_version=0,
                )
                with pytest.raises(ProjectionTimeout, match="behind"):
                    await wait_for_version(engine, projection, fast_user, 1, 0.5)
                await slow.commit()
            store.committed()
            await wait_for_version(engine, projection, fast_user, 1, 5)
            await wait_for_version(engine, projection, slow_user, 2, 5)
        rows = (await snapshot(engine, USERS, ACCOUNTS))["users"]
        assert rows[slow_user]["email"] == "slow@x.io"
        assert rows[slow_user]["version"] == 2
    finally:
        await engine.dispose()


async def test_timeout_says_no_projector_is_running(engine: AsyncEngine) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    sid = uuid.uuid4()
    await store.append(
        sid, [UserRegistered(email="a@x.io", hashed_password="h")], expected_version=0
    )
    with pytest.raises(ProjectionTimeout, match="no projector is running"):
        await wait_for_version(engine, UserProjection(AppUser, AppOAuth), sid, 1, 0.2)
