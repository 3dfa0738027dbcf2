"""One batch over several partitions (`ProjectionWorker.run_batches`), on both backends: each
partition's events after its own checkpoint, in log order; a partition whose lease was taken
or whose checkpoint another worker moved is left out and nothing of it is committed; every
event is applied exactly once in the end."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import Cursor, EventStore, RecordedEvent, UserEmailChanged, UserRegistered
from projections import UserProjection, leases
from projections.tables import projection_checkpoints, projection_leases
from projections.worker import ProjectionWorker
from tests.support.projection import AppOAuth, AppUser, create_tables

PARTITIONS = 4


class Recording:
    """The user projection, remembering what it was handed (rolled-back batches included)."""

    def __init__(self, inner: UserProjection) -> None:
        self.inner, self.name = inner, inner.name
        self.batches: list[list[RecordedEvent]] = []

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        self.batches.append(list(batch))
        await self.inner.handle(conn, batch)


async def leased_worker(engine: AsyncEngine, batch_size: int = 500) -> ProjectionWorker:
    await create_tables(engine)
    sub = Recording(UserProjection(AppUser, AppOAuth))
    worker = ProjectionWorker(
        engine, EventStore(engine), sub, partitions=PARTITIONS, batch_size=batch_size
    )
    async with engine.begin() as conn:
        await leases.ensure_partitions(conn, worker.name, PARTITIONS)
        for p in range(PARTITIONS):
            assert await leases.acquire(conn, worker.name, p, worker.worker_id, 30)
    worker.held = set(range(PARTITIONS))
    return worker


async def users_in_each_partition(store: EventStore, per_partition: int) -> list[uuid.UUID]:
    """Registered users, `per_partition` in each partition, in a shuffled log order."""
    ids: dict[int, list[uuid.UUID]] = {p: [] for p in range(PARTITIONS)}
    while min(len(v) for v in ids.values()) < per_partition:
        sid = uuid.uuid4()
        p = leases.partition_of(sid, PARTITIONS)
        if len(ids[p]) < per_partition:
            ids[p].append(sid)
            await store.append(
                sid, [UserRegistered(email=f"{sid}@x.io", hashed_password="h")], expected_version=0
            )
    return [sid for p in range(PARTITIONS) for sid in ids[p]]


async def versions(engine: AsyncEngine) -> dict[uuid.UUID, int]:
    table = AppUser.__table__
    async with engine.connect() as conn:
        return {r.id: r.version for r in await conn.execute(select(table.c.id, table.c.version))}


async def checkpoint(engine: AsyncEngine, name: str, partition: int) -> Cursor | None:
    async with engine.connect() as conn:
        return await leases.read_checkpoint(conn, name, partition)


async def test_one_batch_takes_every_partition_in_log_order(engine: AsyncEngine) -> None:
    worker = await leased_worker(engine, batch_size=10)
    store = worker.store
    users = await users_in_each_partition(store, 5)
    log = await store.read_after(Cursor.start(), limit=100)

    assert await worker.run_batches(sorted(worker.held)) == 10
    sub = worker.subscriber
    assert isinstance(sub, Recording)
    assert [e.position for e in sub.batches[0]] == [e.position for e in log[:10]]
    while await worker.run_batches(sorted(worker.held)):
        pass
    assert await versions(engine) == {sid: 1 for sid in users}
    for p in range(PARTITIONS):  # each checkpoint at its partition's last event
        last = [e for e in log if e.shard % PARTITIONS == p][-1]
        assert await checkpoint(engine, worker.name, p) == last.cursor
    assert await worker.run_batches(sorted(worker.held)) == 0


async def test_a_partition_taken_by_another_worker_is_left_out(engine: AsyncEngine) -> None:
    worker = await leased_worker(engine)
    users = await users_in_each_partition(worker.store, 3)
    async with engine.begin() as conn:  # another worker took partition 1 (ours had expired)
        await conn.execute(
            update(projection_leases)
            .where(projection_leases.c.name == worker.name, projection_leases.c.partition == 1)
            .values(holder="someone-else")
        )

    assert await worker.run_batches(sorted(worker.held)) == 9
    assert worker.held == {0, 2, 3}
    projected = await versions(engine)
    assert set(projected) == {s for s in users if leases.partition_of(s, PARTITIONS) != 1}
    assert await checkpoint(engine, worker.name, 1) == Cursor.start()


async def test_a_checkpoint_moved_by_another_worker_is_read_again(engine: AsyncEngine) -> None:
    worker = await leased_worker(engine)
    store = worker.store
    users = await users_in_each_partition(store, 2)
    assert await worker.run_batches(sorted(worker.held)) == 8
    for sid in users:
        await store.append(sid, [UserEmailChanged(email=f"new-{sid}@x.io")], expected_version=1)
    log = await store.read_after(Cursor.start(), limit=100)
    # meanwhile another worker (its lease since lost) applied partition 2's changes
    moved_to = [e for e in log if e.shard % PARTITIONS == 2][-1].cursor
    projection = UserProjection(AppUser, AppOAuth)
    async with engine.begin() as conn:
        await projection.handle(conn, [e for e in log[8:] if e.shard % PARTITIONS == 2])
        await conn.execute(
            update(projection_checkpoints)
            .where(
                projection_checkpoints.c.name == worker.name,
                projection_checkpoints.c.partition == 2,
            )
            .values(tx_id=moved_to.tx_id, position=moved_to.position)
        )

    assert await worker.run_batches(sorted(worker.held)) == 6  # partition 2 left out
    assert worker.held == set(range(PARTITIONS))  # still ours: only its checkpoint moved
    assert await worker.run_batches(sorted(worker.held)) == 0  # read again: nothing new
    assert await versions(engine) == {sid: 2 for sid in users}
    sub = worker.subscriber
    assert isinstance(sub, Recording)
    committed = Counter(e.position for batch in sub.batches for e in batch)
    assert all(n == 1 for pos, n in committed.items() if pos not in {e.position for e in log[8:]})
    assert await checkpoint(engine, worker.name, 2) == moved_to
