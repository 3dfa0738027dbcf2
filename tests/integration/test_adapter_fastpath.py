"""Worker mode's writer-side fast path: a command projects its own events in its append
transaction only when the read model is exactly at the version it was decided on; the
projector re-applying them is a no-op; a read model behind is never patched over a gap."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore
from projections import UserProjection
from registry import run_projector
from registry.adapter.runtime import custom_columns
from registry.domain.commands import RegisterUser, UpdateUser
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers
from registry.settings import Settings
from tests.support.adapter import OAuthAccount, User, projector_caught_up


async def _row_or_none(engine: AsyncEngine, user_id: uuid.UUID) -> Row[Any] | None:
    table = User.__table__
    async with engine.connect() as conn:
        return (await conn.execute(select(table).where(table.c.id == user_id))).first()


async def _row(engine: AsyncEngine, user_id: uuid.UUID) -> Row[Any]:
    row = await _row_or_none(engine, user_id)
    assert row is not None, f"no read-model row for {user_id}"
    return row


async def test_fast_path_projects_own_events_and_never_over_a_gap(
    engine: AsyncEngine, database_url: str
) -> None:
    await ensure_schema(engine, User, OAuthAccount)  # tables, no projector yet
    store = EventStore(engine)
    fields = custom_columns(User)
    plain = CommandHandlers(engine, store, profile_fields=fields)  # like a bus consumer
    fast = CommandHandlers(
        engine, store, profile_fields=fields, own_projection=UserProjection(User, OAuthAccount)
    )

    # the read model is at the command's version: projected in the append transaction
    a = uuid.uuid4()
    out = await fast.handle(RegisterUser(user_id=a, email="a@x.io", hashed_password="h"))
    assert out.projected
    assert (await _row(engine, a)).version == 1
    out = await fast.handle(UpdateUser(user_id=a, is_verified=True, profile={"first_name": "A"}))
    assert out.projected
    row = await _row(engine, a)
    assert (row.version, row.is_verified, row.first_name) == (3, True, "A")  # two events

    # another writer appended without projecting: the read model is behind, so the fast
    # path leaves the newer events to the projector instead of skipping the older ones
    b = uuid.uuid4()
    await plain.handle(RegisterUser(user_id=b, email="b@x.io", hashed_password="h"))
    await plain.handle(UpdateUser(user_id=b, profile={"first_name": "B"}))
    out = await fast.handle(UpdateUser(user_id=b, is_verified=True))
    assert not out.projected
    assert out.version == 3
    assert await _row_or_none(engine, b) is None

    async with run_projector(
        engine, User, OAuthAccount, settings=Settings(database_url=database_url), migrate=False
    ):
        await projector_caught_up(engine, store)
    row = await _row(engine, b)
    assert (row.version, row.is_verified, row.first_name) == (3, True, "B")
    row = await _row(engine, a)  # re-applied by the projector: unchanged
    assert (row.version, row.is_verified, row.first_name) == (3, True, "A")  # two events

    # the row exists but is behind (the projector has not seen a plain writer's change yet):
    # the fast path's guarded UPDATE matches nothing and leaves both changes to the projector
    await plain.handle(UpdateUser(user_id=b, profile={"first_name": "Bee"}))  # version 4
    out = await fast.handle(UpdateUser(user_id=b, is_superuser=True))  # decided on 4
    assert not out.projected
    assert out.version == 5
    row = await _row(engine, b)
    assert (row.version, row.first_name, row.is_superuser) == (3, "B", False)
    async with run_projector(
        engine, User, OAuthAccount, settings=Settings(database_url=database_url), migrate=False
    ):
        await projector_caught_up(engine, store)
    row = await _row(engine, b)
    assert (row.version, row.first_name, row.is_superuser) == (5, "Bee", True)
