"""`run_projector` as in an app's lifespan: on a fresh database it migrates, adds the app's
custom columns to the read model, and projects into them; reads wait for their version."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, OAuthAccountLinked, UserProfileUpdated, UserRegistered
from projections import UserProjection
from projections.worker import wait_for_version
from registry.adapter.projector import run_projector
from registry.settings import Settings
from tests.support.projection import AppOAuth, AppUser


async def test_run_projector_projects_into_the_apps_models(engine: AsyncEngine) -> None:
    settings = Settings(projection_partitions=2, lease_ttl=2)
    store = EventStore(engine)
    sid, oid = uuid.uuid4(), uuid.uuid4()
    async with run_projector(engine, AppUser, AppOAuth, settings=settings) as worker:
        assert worker.held == {0, 1}
        await store.append(
            sid,
            [
                UserRegistered(
                    email="Ann@Example.com", hashed_password="h", profile={"loyalty": 1}
                ),
                UserProfileUpdated(changes={"first_name": "Ann"}),
                OAuthAccountLinked(
                    oauth_account_id=oid,
                    oauth_name="github",
                    access_token="t",
                    account_id="42",
                    account_email="ann@example.com",
                ),
            ],
            expected_version=0,
        )
        await wait_for_version(engine, UserProjection(AppUser, AppOAuth), sid, 3, 10)
    async with engine.connect() as conn:
        user = (await conn.execute(select(AppUser.__table__))).mappings().one()
        account = (await conn.execute(select(AppOAuth.__table__))).mappings().one()
    assert (user["first_name"], user["loyalty"], user["version"]) == ("Ann", 1, 3)
    assert (account["user_id"], account["link_order"]) == (sid, 3)
    # a second start finds everything in place
    async with run_projector(engine, AppUser, AppOAuth, settings=settings):
        pass
