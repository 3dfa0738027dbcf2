"""The user projection over an encrypted log, on SQLite and PostgreSQL: the read model shows the
opened values; an erased user's rows go, live and after a replay, and everyone else's stay
exactly as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import Cursor, EventStore, UserErased
from events.crypto import Crypto, Keyring, MasterKey, attach, shred
from events.tables import events
from projections import UserProjection
from projections.replay import replay
from projections.worker import ProjectionWorker
from tests.support.projection import (
    AppOAuth,
    AppUser,
    History,
    assert_matches_model,
    caught_up,
    create_tables,
    running,
    tombstones,
)
from tests.support.projection import snapshot as snap

USERS, ACCOUNTS = AppUser.__table__, AppOAuth.__table__


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[EventStore]:
    await create_tables(engine)
    attach(engine, Crypto(Keyring(MasterKey.generate()), personal_profile={"first_name"}))
    yield EventStore(engine)
    attach(engine, None)


async def test_erased_users_leave_the_read_model_live_and_after_replay(
    engine: AsyncEngine, store: EventStore
) -> None:
    projection = UserProjection(AppUser, AppOAuth)
    worker = ProjectionWorker(engine, store, projection, partitions=2, batch_size=64, lease_ttl=2)
    async with running(worker):
        model = await History(store, seed=11).run(600)
        await caught_up(engine, store)
        before = await snap(engine, USERS, ACCOUNTS)
        assert_matches_model(before, model)  # opened values, not "[erased]"
        async with engine.connect() as conn:
            stored = [r.data for r in await conn.execute(select(events.c.data))]
        assert not any("@" in str(d.get("email", "")) for d in stored)  # sealed at rest

        linked = {a["user_id"] for a in model.oauth.values()}
        victims = [u for u in model.users if u in linked][:3]
        victims += [u for u in model.users if u not in linked][:3]
        assert len(victims) == 6
        for sid in victims:
            async with engine.begin() as conn:
                await store.append(
                    sid, [UserErased()], expected_version=model.versions[sid], conn=conn
                )
                await shred(conn, store.crypto, sid)
            store.committed()
        await caught_up(engine, store)

    live = await snap(engine, USERS, ACCOUNTS)
    assert set(live["users"]) == set(before["users"]) - set(victims)
    assert {k: v for k, v in before["users"].items() if k not in victims} == live["users"]
    assert not any(a["user_id"] in victims for a in live["oauth"].values())
    assert {k: v for k, v in before["oauth"].items() if v["user_id"] not in victims} == live[
        "oauth"
    ]
    live_tombs = await tombstones(engine)
    assert {t[1] for t in live_tombs} >= set(victims)

    await replay(engine, projection, batch_size=97)
    assert await snap(engine, USERS, ACCOUNTS) == live
    assert await tombstones(engine) == live_tombs

    erased_reads = [r for r in await store.read_after(Cursor.start(), limit=10_000) if r.erased]
    assert {r.stream_id for r in erased_reads} == set(victims)


async def test_events_of_an_erased_user_never_project_a_row(
    engine: AsyncEngine, store: EventStore
) -> None:
    """A projector that reaches an erased user's registration before its UserErased (one
    event per batch here) must not write placeholder rows (two would even clash on email)."""
    model = await History(store, seed=5).run(120)
    victims = list(model.users)[:2]
    for sid in victims:
        async with engine.begin() as conn:
            await store.append(sid, [UserErased()], expected_version=model.versions[sid], conn=conn)
            await shred(conn, store.crypto, sid)
    projection = UserProjection(AppUser, AppOAuth)
    for recorded in await store.read_after(Cursor.start(), limit=10_000):
        async with engine.begin() as conn:
            await projection.apply(conn, [recorded])
        async with engine.connect() as conn:
            assert not set(await conn.scalars(select(USERS.c.id).where(USERS.c.id.in_(victims))))
    rows = await snap(engine, USERS, ACCOUNTS)
    assert set(rows["users"]) == set(model.users) - set(victims)
