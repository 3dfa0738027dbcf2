"""The user projection on SQLite and PostgreSQL: live workers and replays agree with the log,
row for row; applying twice changes nothing; a deleted user never comes back."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    Cursor,
    EventStore,
    OAuthAccountLinked,
    UserDeleted,
    UserEmailChanged,
    UserRegistered,
)
from projections import UserProjection, projected_version
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
    snapshot,
    tombstones,
)

USERS, ACCOUNTS = AppUser.__table__, AppOAuth.__table__


async def test_live_projection_and_replays_equal_the_log(engine: AsyncEngine) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    projection = UserProjection(AppUser, AppOAuth)
    worker = ProjectionWorker(engine, store, projection, partitions=4, batch_size=40, lease_ttl=2)
    async with running(worker):
        model = await History(store, seed=7).run(1500)
        await caught_up(engine, store)
    live = await snapshot(engine, USERS, ACCOUNTS)
    assert_matches_model(live, model)
    # the history is varied
    assert len(model.deleted) > 10
    assert len(model.oauth) > 60
    live_tombs = await tombstones(engine)

    result = await replay(engine, projection, batch_size=333)  # blue/green, then swapped in
    assert result.events == model.events
    assert await snapshot(engine, USERS, ACCOUNTS) == live  # row for row, timestamps included
    assert await tombstones(engine) == live_tombs

    await replay(engine, projection, in_place=True, batch_size=1000)
    assert await snapshot(engine, USERS, ACCOUNTS) == live


async def test_applying_the_same_batch_twice_changes_nothing(engine: AsyncEngine) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    projection = UserProjection(AppUser, AppOAuth)
    await History(store, seed=3).run(400)
    batch = await store.read_after(Cursor.start(), limit=10_000)
    async with engine.begin() as conn:
        await projection.apply(conn, batch)
    once = await snapshot(engine, USERS, ACCOUNTS)
    for part in (batch, batch[: len(batch) // 2], batch[len(batch) // 3 :], batch[::-1][:50]):
        async with engine.begin() as conn:
            await projection.apply(conn, part)
        assert await snapshot(engine, USERS, ACCOUNTS) == once


async def test_an_older_event_after_deletion_does_not_resurrect(engine: AsyncEngine) -> None:
    await create_tables(engine)
    store = EventStore(engine)
    projection = UserProjection(AppUser, AppOAuth)
    sid, oid = uuid.uuid4(), uuid.uuid4()
    await store.append(
        sid,
        [
            UserRegistered(email="a@example.com", hashed_password="h", profile={"loyalty": 3}),
            OAuthAccountLinked(
                oauth_account_id=oid,
                oauth_name="github",
                access_token="t",
                account_id="1",
                account_email="a@example.com",
            ),
            UserEmailChanged(email="b@example.com"),
        ],
        expected_version=0,
    )
    await store.append(sid, [UserDeleted()], expected_version=3)
    events = await store.read_stream(sid)
    async with engine.begin() as conn:
        await projection.apply(conn, events[:3])
    snap = await snapshot(engine, USERS, ACCOUNTS)
    assert snap["users"][sid]["loyalty"] == 3
    assert snap["users"][sid]["version"] == 3
    assert snap["oauth"][oid]["link_order"] == 2
    async with engine.begin() as conn:
        await projection.apply(conn, events[3:])
    for replayed in (events[:1], events[:2], events[1:3], events):
        async with engine.begin() as conn:
            await projection.apply(conn, replayed)
        assert await snapshot(engine, USERS, ACCOUNTS) == {"users": {}, "oauth": {}}
    async with engine.connect() as conn:
        assert await projected_version(conn, projection, sid) == 4
