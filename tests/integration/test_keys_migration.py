"""`registry encrypt-events` on SQLite and PostgreSQL: events stored before encryption (current
and old schema versions, a stream mixing clear and sealed events, an erased user) are sealed in
place, resumably and idempotently; the log reads back the same, the read model and a replay are
unchanged, and no personal value is left in clear in the events table."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine, shard_of
from events.crypto import Crypto, Keyring, MasterKey, crypto_of
from events.keyops import encrypt_events
from events.tables import data_keys, events
from registry.domain.commands import UpdateUser
from registry.service.handlers import CommandHandlers
from registry.service.keys import enable
from tests.support.keys import (
    cli,
    erase,
    log_contents,
    populate,
    project,
    read_model,
    read_streams,
    settings_for,
)

KEY = MasterKey.generate()
V1_EMAIL, V1_HASH = "ada.v1@example.com", "$argon2id$v1-legacy-hash"


async def insert_v1_registration(engine: AsyncEngine) -> uuid.UUID:
    """A UserRegistered as the first release stored it (schema v1: `password_hash`)."""
    sid = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(events).values(
                stream_id=sid,
                stream_version=1,
                shard=shard_of(sid),
                event_id=uuid.uuid4(),
                event_type="UserRegistered",
                schema_version=1,
                data={"email": V1_EMAIL, "password_hash": V1_HASH, "is_active": True},
                metadata={},
                recorded_at=datetime.now(UTC),
            )
        )
    return sid


async def sealed_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(events).where(events.c.sealed.is_not(None))
        return int(await conn.scalar(stmt) or 0)


async def personal_in_clear(engine: AsyncEngine, stream_id: uuid.UUID | None = None) -> int:
    """Events stored without a sealed part that still hold personal values (or their
    placeholders)."""
    splitter = Crypto(Keyring(MasterKey.generate()))
    stmt = select(events.c.event_type, events.c.data).where(events.c.sealed.is_(None))
    if stream_id is not None:
        stmt = stmt.where(events.c.stream_id == stream_id)
    async with engine.connect() as conn:
        rows = await conn.execute(stmt)
        return sum(1 for r in rows if splitter.split(r.event_type, r.data)[1] is not None)


async def key_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(data_keys)) or 0)


async def test_encrypt_events_seals_the_old_log_resumably_and_changes_nothing_visible(
    database_url: str, engine: AsyncEngine
) -> None:
    # a log written before this feature: nothing sealed
    assert crypto_of(engine) is None
    pop = await populate(engine, 8, handlers=CommandHandlers(engine, EventStore(engine)))
    old = await insert_v1_registration(engine)
    ids = [*pop.ids, old]
    victim = pop.ids[-1]
    await erase(engine, victim)  # erased before the migration: its values are gone already
    stored = await log_contents(engine)
    # in clear
    assert all(s in stored for s in pop.secrets[:-2])
    assert V1_HASH in stored
    assert pop.secrets[-1] not in stored  # the victim's (its last secret)
    victim_events = await personal_in_clear(engine, victim)
    assert victim_events >= 1

    # encryption turned on: a legacy stream gets a key with its first new event
    crypto = await enable(engine, settings_for(database_url, KEY))
    handlers = CommandHandlers(engine, EventStore(engine))
    await handlers.handle(UpdateUser(user_id=pop.ids[0], email="later@example.com"))
    assert await sealed_count(engine) == 1
    await project(engine)
    model = await read_model(engine)
    log = await read_streams(EventStore(engine), ids)
    assert log[old][0][2]["hashed_password"] == V1_HASH
    to_seal = await personal_in_clear(engine) - victim_events  # placeholders stay
    assert to_seal > 15

    # a run that stops after its first batch of 10 events keeps that batch
    def crash(_done: int, _total: int) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        await encrypt_events(engine, crypto, batch_size=10, on_progress=crash)
    first = await sealed_count(engine) - 1
    assert 0 < first <= 10
    keys_before = await key_rows(engine)  # user 0's, the victim's and the first batch's
    assert await read_streams(EventStore(engine), ids) == log  # half sealed: reads the same

    # the documented command finishes it
    env: dict[str, str | None] = {
        "REGISTRY_DATABASE_URL": database_url,
        "REGISTRY_MASTER_KEY": KEY.encoded(),
    }
    code, out, err = await cli("encrypt-events", "--batch-size", "7", "--json", env=env)
    assert code == 0, (out, err)
    summary = json.loads(out)
    assert summary["sealed"] == to_seal - first
    assert summary["skipped_erased"] == victim_events
    assert summary["keys_created"] == len(ids) - keys_before > 0
    assert await key_rows(engine) == len(ids)
    assert KEY.encoded() not in out + err

    stored = await log_contents(engine)
    assert not any(s in stored for s in [*pop.secrets, V1_EMAIL, V1_HASH])
    assert await personal_in_clear(engine) == victim_events  # the victim's placeholders only

    # another process reads the same log, the read model is untouched, a replay agrees
    fresh = create_engine(database_url)
    try:
        await enable(fresh, settings_for(database_url, KEY))
        assert await read_streams(EventStore(fresh), ids) == log
        assert await read_model(fresh) == model
        await project(fresh)
        assert await read_model(fresh) == model
    finally:
        await fresh.dispose()

    # idempotent: a second run finds nothing to do
    again = await encrypt_events(engine, crypto, batch_size=5)
    assert (again.sealed, again.keys_created) == (0, 0)
    code, out, err = await cli("encrypt-events", env=env)
    assert code == 0, out
    assert "sealed 0 events" in out, out
    assert "nothing left to encrypt" in out, out
