"""Helpers for the event store tests (no tests here): a store on empty tables, one sample of
every event type, raw row access and the log as `read_after` releases it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    EVENT_TYPES,
    Cursor,
    Event,
    EventStore,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    UserActivated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserErased,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserUnverified,
    UserVerified,
    shard_of,
)
from events.envelope import RecordedEvent
from events.tables import events, metadata
from tests.support.waiting import eventually

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
ACCOUNT = uuid.UUID("00000000-0000-4000-8000-00000000a001")


def samples() -> list[Event]:
    """One event of every type of the catalog, with non-default values."""
    out: list[Event] = [
        UserRegistered(
            email="Ada@Example.com",
            hashed_password=HASH,
            is_active=False,
            is_superuser=True,
            is_verified=True,
            profile={"first_name": "Ada", "age": 36, "tags": ["a", "b"], "nested": {"x": None}},
        ),
        UserEmailChanged(email="ada@lovelace.org"),
        UserPasswordChanged(hashed_password=HASH + "2"),
        UserVerified(),
        UserUnverified(),
        UserActivated(),
        UserDeactivated(),
        UserSuperuserGranted(),
        UserSuperuserRevoked(),
        UserProfileUpdated(changes={"first_name": "Augusta", "score": 1.5, "gone": None}),
        OAuthAccountLinked(
            oauth_account_id=ACCOUNT,
            oauth_name="google",
            access_token="ya29.token",
            expires_at=1_900_000_000,
            refresh_token="1//refresh",
            account_id="g-42",
            account_email="ada@gmail.com",
        ),
        OAuthAccountUpdated(
            oauth_account_id=ACCOUNT, changes={"access_token": "ya29.new", "expires_at": None}
        ),
        UserDeleted(),
        UserErased(),
    ]
    assert {e.event_type for e in out} == set(EVENT_TYPES), "a sample for every event type"
    return out


async def open_store(engine: AsyncEngine) -> EventStore:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return EventStore(engine)


async def count_rows(engine: AsyncEngine, stream_id: uuid.UUID | None = None) -> int:
    stmt = select(func.count()).select_from(events)
    if stream_id is not None:
        stmt = stmt.where(events.c.stream_id == stream_id)
    async with engine.connect() as conn:
        return int(await conn.scalar(stmt) or 0)


async def insert_raw(
    engine: AsyncEngine,
    stream_id: uuid.UUID,
    version: int,
    event_type: str,
    schema_version: int,
    data: dict[str, Any],
    recorded_at: datetime,
) -> None:
    """A row written the way an older release (or another program) would have written it."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(events).values(
                stream_id=stream_id,
                stream_version=version,
                shard=shard_of(stream_id),
                event_id=uuid.uuid4(),
                event_type=event_type,
                schema_version=schema_version,
                data=data,
                metadata={"actor": "legacy"},
                recorded_at=recorded_at,
            )
        )


async def read_log(store: EventStore, count: int, *, timeout: float = 15.0) -> list[RecordedEvent]:
    """The first `count` events of the log through `read_after`, waiting (with a deadline) for
    PostgreSQL to release them: any transaction still open on the server, in any database,
    holds back what `read_after` may return."""
    found: list[RecordedEvent] = []

    async def more() -> bool:
        cursor = found[-1].cursor if found else Cursor.start()
        found.extend(await store.read_after(cursor, limit=count - len(found)))
        return len(found) >= count

    await eventually(
        more, timeout=timeout, interval=0.01, message=f"{count} events from read_after"
    )
    return found


async def count_events(engine: AsyncEngine, event_type: str | None = None) -> int:
    stmt = select(func.count()).select_from(events)
    if event_type:
        stmt = stmt.where(events.c.event_type == event_type)
    async with engine.connect() as conn:
        return int(await conn.scalar(stmt) or 0)
