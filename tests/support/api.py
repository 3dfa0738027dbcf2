"""Helpers of the read-API tests (no tests here): an app over a fresh database, and users
written to the log and projected with the real projection code."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    Event,
    EventStore,
    OAuthAccountLinked,
    RecordedEvent,
    UserRegistered,
)
from events.tables import metadata as events_metadata
from projections import OAuthAccount, User, UserProjection
from projections.tables import metadata as projections_metadata
from registry.api import create_app
from registry.bootstrap import Container
from registry.settings import Settings

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "second-token-abcdef"
#: secrets written into the log: no response may ever contain one of them
HASH = "$argon2id$v=19$m=65536,t=3,p=4$SECRETHASHsecrethash"
ACCESS = "oauth-access-TOKEN-secret"
REFRESH = "oauth-refresh-TOKEN-secret"
SECRETS = (HASH, ACCESS, REFRESH, "SECRETHASH", "TOKEN-secret")


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(projections_metadata.create_all)


def make_container(engine: AsyncEngine, **settings: object) -> Container:
    values: dict[str, Any] = {
        "database_url": str(engine.url),
        "api_tokens": [TOKEN, OTHER_TOKEN],
        "read_your_writes_timeout": 1.0,
    }
    values.update(settings)
    return Container(
        settings=Settings(**values),
        engine=engine,
        store=EventStore(engine),
        user_table=User,
        oauth_table=OAuthAccount,
    )


@dataclass
class Api:
    container: Container
    app: FastAPI
    client: httpx.AsyncClient
    projection: Any
    users: list[uuid.UUID] = field(default_factory=list)

    @property
    def store(self) -> EventStore:
        return self.container.store

    async def project(self, recorded: Sequence[RecordedEvent]) -> None:
        async with self.container.engine.begin() as conn:
            await self.projection.apply(conn, list(recorded))

    async def append(
        self,
        user_id: uuid.UUID,
        events: Sequence[Event],
        *,
        project: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> list[RecordedEvent]:
        version = await self.store.stream_version(user_id)
        recorded = await self.store.append(
            user_id, events, expected_version=version, metadata=metadata
        )
        if project:
            await self.project(recorded)
        return recorded

    async def register(
        self,
        email: str,
        *,
        oauth: bool = False,
        project: bool = True,
        **flags: bool,
    ) -> uuid.UUID:
        user_id = uuid.uuid4()
        events: list[Event] = [
            UserRegistered.model_validate({"email": email, "hashed_password": HASH, **flags})
        ]
        if oauth:
            events.append(
                OAuthAccountLinked(
                    oauth_account_id=uuid.uuid4(),
                    oauth_name="github",
                    access_token=ACCESS,
                    refresh_token=REFRESH,
                    expires_at=1_900_000_000,
                    account_id=f"gh-{user_id.hex[:8]}",
                    account_email=email,
                )
            )
        await self.append(
            user_id, events, project=project, metadata={"command_id": f"reg-{user_id}"}
        )
        self.users.append(user_id)
        return user_id


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_api(engine: AsyncEngine, **settings: object) -> Api:
    await create_tables(engine)
    container = make_container(engine, **settings)
    app = create_app(container)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry.test", headers=auth()
    )
    projection = UserProjection(container.user_table, container.oauth_table)
    return Api(container=container, app=app, client=client, projection=projection)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into a response: {secret!r}"
