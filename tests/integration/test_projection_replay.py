"""Blue/green replay while the live worker runs and writes continue: readers never see an
empty or partial table; after the swap the rows match the log. Interrupted replays resume or
are abandoned without touching the live tables."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from events import Cursor, EventStore, UserRegistered, create_engine
from projections import UserProjection
from projections import replay as replay_module
from projections.errors import ReplayError
from projections.replay import Progress, Replay, replay
from projections.tables import projection_checkpoints
from projections.worker import ProjectionWorker
from tests.support.projection import (
    AppOAuth,
    AppUser,
    History,
    assert_matches_model,
    caught_up,
    create_tables,
    running,
    snapshot,
)

USERS, ACCOUNTS = AppUser.__table__, AppOAuth.__table__


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_blue_green_replay_while_writes_continue(engine: AsyncEngine) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    projection = UserProjection(AppUser, AppOAuth)
    # sentinels: users no later write touches; every read must see all of them
    sentinels = [uuid.uuid4() for _ in range(30)]
    for i, sid in enumerate(sentinels):
        event = UserRegistered(email=f"sentinel{i}@example.com", hashed_password="h")
        await store.append(sid, [event], expected_version=0)
    history = History(store, seed=5)
    worker = ProjectionWorker(engine, store, projection, partitions=2, batch_size=50, lease_ttl=2)
    async with running(worker):
        await history.run(800)
        await caught_up(engine, store)
        done = asyncio.Event()
        reads = 0

        async def read() -> None:
            nonlocal reads
            while not done.is_set():
                async with engine.connect() as conn:
                    found = set(
                        await conn.scalars(select(USERS.c.id).where(USERS.c.id.in_(sentinels)))
                    )
                    total = await conn.scalar(select(func.count()).select_from(USERS))
                assert found == set(sentinels), "a reader saw a partial user table"
                assert total
                assert total >= len(sentinels)
                reads += 1
                await asyncio.sleep(0.002)

        async def write() -> None:
            while not done.is_set():
                await history.step()
                await asyncio.sleep(0.001)

        tasks = [asyncio.create_task(read()), asyncio.create_task(write())]
        try:
            result = await replay(engine, projection, batch_size=100)
        finally:
            done.set()
            await asyncio.gather(*tasks)
        assert result.events > 800
        assert reads > 10
        assert not {"user__next", "oauth_account__next"} & await table_names(engine)
        await caught_up(engine, store)
    snap = await snapshot(engine, USERS, ACCOUNTS)
    model_users = {k: v for k, v in snap["users"].items() if k not in sentinels}
    assert_matches_model({"users": model_users, "oauth": snap["oauth"]}, history.model)
    async with engine.connect() as conn:  # the swapped-in tables keep the live index names
        if engine.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        indexes = set(await conn.scalars(text(sql)))
    assert {"ix_user_email", "ix_oauth_account_user_id"} <= indexes
    assert not [i for i in indexes if "__next" in i]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("finish", ["resume", "abandon"])
async def test_an_interrupted_replay_resumes_or_is_abandoned(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    projection = UserProjection(AppUser, AppOAuth)
    worker = ProjectionWorker(engine, store, projection, partitions=2, batch_size=200)
    async with running(worker):
        model = await History(store, seed=9).run(1000)
        await caught_up(engine, store)
    live = await snapshot(engine, USERS, ACCOUNTS)
    monkeypatch.setattr(replay_module, "FLUSH_STREAMS", 20)

    def stop_midway(p: Progress) -> None:
        if p.done > 450:
            raise Interrupt

    with pytest.raises(Interrupt):
        await Replay(engine, projection, batch_size=50, on_progress=stop_midway).run()
    assert await snapshot(engine, USERS, ACCOUNTS) == live  # the live tables are untouched
    assert "user__next" in await table_names(engine)
    async with engine.connect() as conn:
        done_shards = await conn.scalar(
            select(func.count())
            .select_from(projection_checkpoints)
            .where(
                projection_checkpoints.c.name == "users__next",
                projection_checkpoints.c.tx_id + projection_checkpoints.c.position > 0,
            )
        )
    # progress was kept
    assert done_shards
    assert done_shards > 1

    if finish == "resume":
        seen: list[int] = []
        result = await Replay(engine, projection, on_progress=lambda p: seen.append(p.done)).run()
        assert result.events < model.events  # resumed: done shards were not read again
        assert await snapshot(engine, USERS, ACCOUNTS) == live
    else:
        assert await Replay(engine, projection).abandon()
        assert "user__next" not in await table_names(engine)
        assert await snapshot(engine, USERS, ACCOUNTS) == live
        await replay(engine, projection)
        assert await snapshot(engine, USERS, ACCOUNTS) == live
    assert_matches_model(await snapshot(engine, USERS, ACCOUNTS), model)


async def test_replay_writes_new_rows_with_copy_on_postgresql(pg_url: str) -> None:
    """The bulk phase COPYs its rows: ids read back through asyncpg (its own UUID subclass)
    once sent every row through INSERT instead, a fifth of the replay's time."""

    engine = create_engine(pg_url)
    inserts: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def seen(_conn: object, _cursor: object, stmt: str, *_: object) -> None:
        if stmt.lstrip().upper().startswith("INSERT INTO") and "__next" in stmt:
            inserts.append(stmt)

    try:
        await create_tables(engine)
        store = EventStore(engine)
        model = await History(store, seed=11).run(300)
        await replay(engine, UserProjection(AppUser, AppOAuth))
        assert_matches_model(await snapshot(engine, USERS, ACCOUNTS), model)
        assert inserts == []
    finally:
        await engine.dispose()


async def test_replay_in_several_processes_matches_the_log(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`jobs=3`: on PostgreSQL three processes share the shards (SQLite: one, as before); the
    rows match the log and the progress counts every process's events."""
    await create_tables(engine)
    model = await History(EventStore(engine), seed=13).run(1200)
    monkeypatch.setattr(replay_module, "FLUSH_STREAMS", 25)  # several flushes per process
    workers = tmp_path / "pids"
    real = Replay.bulk_shards

    async def noted(
        self: Replay, shards: list[int], head: Cursor, count: Callable[[int], None]
    ) -> None:
        with workers.open("a") as f:  # children write here too
            f.write(f"{os.getpid()}\n")
        await real(self, shards, head, count)

    monkeypatch.setattr(Replay, "bulk_shards", noted)
    seen: list[int] = []
    projection = UserProjection(AppUser, AppOAuth)
    result = await replay(engine, projection, jobs=3, on_progress=lambda p: seen.append(p.done))
    assert_matches_model(await snapshot(engine, USERS, ACCOUNTS), model)
    assert result.events == model.events == seen[-1]
    pids = set(workers.read_text().split())
    assert len(pids) == (3 if engine.dialect.name == "postgresql" else 1)


async def test_a_failed_replay_process_is_reported_and_the_next_run_resumes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(pg_url)
    try:
        await create_tables(engine)
        model = await History(EventStore(engine), seed=17).run(800)
        projection = UserProjection(AppUser, AppOAuth)
        parent = os.getpid()
        real = Replay.bulk_shards

        async def fails_in_children(
            self: Replay, shards: list[int], head: Cursor, count: Callable[[int], None]
        ) -> None:
            if os.getpid() != parent:
                raise RuntimeError("disk on fire")
            await real(self, shards, head, count)

        monkeypatch.setattr(Replay, "bulk_shards", fails_in_children)
        with pytest.raises(ReplayError, match="1 of 2 replay processes failed"):
            await replay(engine, projection, jobs=2)
        monkeypatch.setattr(Replay, "bulk_shards", real)
        result = await replay(engine, projection, jobs=2)
        assert result.events < model.events  # resumed: this process's shards were kept
        assert_matches_model(await snapshot(engine, USERS, ACCOUNTS), model)
    finally:
        await engine.dispose()
