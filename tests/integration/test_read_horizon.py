"""PostgreSQL's read horizon is per database: a long transaction in another database on the
same server must not hold readers back, while one in ours still does (invariant 2)."""

from __future__ import annotations

import uuid

import asyncpg
from sqlalchemy.engine import make_url

from events import Cursor, EventStore, UserRegistered, UserVerified, create_engine
from events.tables import metadata
from tests.conftest import PG_BASE_URL


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


async def test_a_transaction_in_another_database_does_not_hold_readers_back(pg_url: str) -> None:
    engine = create_engine(pg_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    store = EventStore(engine)
    other = await asyncpg.connect(_dsn(PG_BASE_URL))  # the server's `test` database
    ours = await asyncpg.connect(_dsn(pg_url))
    try:
        other_tx = other.transaction()
        await other_tx.start()
        await other.fetchval("SELECT pg_current_xact_id()")  # holds an xid, stays open
        sid = uuid.uuid4()
        await store.append(
            sid, [UserRegistered(email="a@b.co", hashed_password="h")], expected_version=0
        )
        seen = await store.read_after(Cursor.start())
        assert [e.stream_id for e in seen] == [sid]

        # the same kind of open transaction in OUR database does hold the horizon
        ours_tx = ours.transaction()
        await ours_tx.start()
        await ours.fetchval("SELECT pg_current_xact_id()")
        await store.append(sid, [UserVerified()], expected_version=1)
        assert len(await store.read_after(seen[-1].cursor)) == 0
        await ours_tx.rollback()
        assert [e.stream_version for e in await store.read_after(seen[-1].cursor)] == [2]
        await other_tx.rollback()
    finally:
        await other.close()
        await ours.close()
        await engine.dispose()
