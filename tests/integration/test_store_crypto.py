"""Personal data in the log, on SQLite and PostgreSQL: sealed at rest under a per-stream data
key, readable back with the master key, unreadable once the key is destroyed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    Cursor,
    EventStore,
    RecordedEvent,
    UserEmailChanged,
    UserErased,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserVerified,
)
from events.crypto import (
    ERASED,
    Crypto,
    Keyring,
    MasterKey,
    MasterKeyError,
    StreamErasedError,
    attach,
    shred,
    verify,
)
from events.tables import data_keys, events
from tests.support.store import HASH, count_rows, insert_raw, open_store, samples

EMAIL = "Grace.Hopper@Example.com"
SECRET_TOKEN = "ya29.token"


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
async def store(engine: AsyncEngine, master: MasterKey) -> AsyncIterator[EventStore]:
    plain = await open_store(engine)
    attach(engine, Crypto(Keyring(master), personal_profile={"first_name"}))
    yield EventStore(engine)
    attach(engine, None)
    del plain


async def raw_dump(engine: AsyncEngine) -> str:
    """Every stored byte of the events and data keys tables, as text."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(events))).all()
        keys = (await conn.execute(select(data_keys))).all()
    return repr(rows) + repr(keys) + "".join(bytes(r.sealed or b"").hex() for r in rows)


async def register(store: EventStore, sid: uuid.UUID, email: str = EMAIL) -> None:
    await store.append(
        sid,
        [
            UserRegistered(
                email=email,
                hashed_password=HASH,
                profile={"first_name": "Grace", "age": 85},
            )
        ],
        expected_version=0,
    )


async def test_every_event_type_is_sealed_at_rest_and_reads_back(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid = uuid.uuid4()
    written = samples()
    await store.append(sid, written, expected_version=0)

    back = await store.read_stream(sid)
    assert [r.event for r in back] == written
    assert not any(r.erased for r in back)
    dump = await raw_dump(engine)
    for clear in ("Ada@Example.com", "ada@lovelace.org", HASH, SECRET_TOKEN, "1//refresh"):
        assert clear not in dump, f"{clear!r} is stored in clear"
    # OAuth account id and email
    assert "g-42" not in dump
    assert "ada@gmail.com" not in dump
    # what is not personal stays queryable in clear
    assert '"age": 36' in dump.replace("'age': 36", '"age": 36')
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(data_keys)) == 1


async def test_only_the_apps_personal_profile_columns_are_sealed(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid = uuid.uuid4()
    await register(store, sid)
    await store.append(
        sid, [UserProfileUpdated(changes={"first_name": "Amazing", "age": 86})], expected_version=1
    )
    async with engine.connect() as conn:
        stored = [r.data for r in (await conn.execute(select(events.c.data))).all()]
    assert stored[0]["profile"] == {"first_name": ERASED, "age": 85}
    assert stored[1]["changes"] == {"first_name": ERASED, "age": 86}
    back = await store.read_stream(sid)
    assert back[1].event == UserProfileUpdated(changes={"first_name": "Amazing", "age": 86})


async def test_group_committed_registrations_each_get_their_own_key(
    engine: AsyncEngine, store: EventStore
) -> None:
    ids = [uuid.uuid4() for _ in range(40)]
    await asyncio.gather(
        *(register(store, sid, f"user{i}@example.com") for i, sid in enumerate(ids))
    )
    log = await store.read_after(Cursor.start(), limit=100)
    assert {r.stream_id: r.event.email for r in log} == {  # type: ignore[attr-defined]  # the log gives the Event union
        sid: f"user{i}@example.com" for i, sid in enumerate(ids)
    }
    async with engine.connect() as conn:
        keys = (await conn.execute(select(data_keys.c.stream_id, data_keys.c.wrapped_key))).all()
    assert {k.stream_id for k in keys} == set(ids)
    assert len({bytes(k.wrapped_key) for k in keys}) == len(ids)


async def test_a_sealed_value_moved_to_another_event_does_not_open(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid = uuid.uuid4()
    await register(store, sid)
    await store.append(sid, [UserEmailChanged(email="x@example.com")], expected_version=1)
    async with engine.begin() as conn:
        first = await conn.scalar(select(events.c.sealed).where(events.c.stream_version == 1))
        await conn.execute(update(events).where(events.c.stream_version == 2).values(sealed=first))
    with pytest.raises(MasterKeyError, match="does not open"):
        await store.read_stream(sid)


async def test_without_the_master_key_sealed_events_fail_clearly(
    engine: AsyncEngine, store: EventStore, master: MasterKey
) -> None:
    sid = uuid.uuid4()
    await register(store, sid)
    with pytest.raises(MasterKeyError, match="no master key is configured"):
        await EventStore(engine, crypto=None).read_stream(sid)
    other = Crypto(Keyring(MasterKey.generate()))
    with pytest.raises(MasterKeyError, match="not configured"):
        await EventStore(engine, crypto=other).read_stream(sid)
    with pytest.raises(MasterKeyError, match="does not match"):
        await verify(engine, other.keyring)
    await verify(engine, Keyring(master))  # the right key passes


async def erase(engine: AsyncEngine, store: EventStore, sid: uuid.UUID, version: int) -> None:
    async with engine.begin() as conn:
        await store.append(sid, [UserErased()], expected_version=version, conn=conn)
        await shred(conn, store.crypto, sid)


async def test_an_erased_stream_reads_as_erased_and_takes_no_more_events(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid, other = uuid.uuid4(), uuid.uuid4()
    await register(store, sid)
    await register(store, other, "other@example.com")
    await store.append(sid, [UserPasswordChanged(hashed_password=HASH + "2")], expected_version=1)
    await erase(engine, store, sid, 2)

    back = await store.read_stream(sid)
    assert [r.erased for r in back] == [True, True, True]
    assert back[0].event.email == ERASED  # type: ignore[attr-defined]  # the log gives the Event union
    assert back[0].event.profile == {"first_name": ERASED, "age": 85}  # type: ignore[attr-defined]  # the log gives the Event union
    assert back[1].event.hashed_password == ERASED  # type: ignore[attr-defined]  # the log gives the Event union
    log = await store.read_after(Cursor.start())
    assert {r.stream_id for r in log if r.erased} == {sid}
    assert [r.event.email for r in log if r.stream_id == other] == [  # type: ignore[attr-defined]  # the log gives the Event union
        "other@example.com"
    ]
    async with engine.connect() as conn:
        key = (await conn.execute(select(data_keys).where(data_keys.c.stream_id == sid))).one()
    assert key.wrapped_key is None
    assert key.master_key_id is None
    assert key.erased_at is not None

    before = await count_rows(engine)
    # a store in another process still holding the key in memory: refused by the key row
    fresh = EventStore(engine, crypto=Crypto(store.crypto.keyring))  # type: ignore[union-attr]  # the store was made with a Crypto
    with pytest.raises(StreamErasedError, match="was erased"):
        await fresh.append(sid, [UserEmailChanged(email="new@example.com")], expected_version=4)
    assert await count_rows(engine) == before


async def test_erasing_a_stream_written_in_clear_overwrites_its_personal_values(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid = uuid.uuid4()
    # written before encryption existed (an older release), then one event under encryption
    await insert_raw(
        engine,
        sid,
        1,
        "UserRegistered",
        1,
        {"email": EMAIL, "password_hash": HASH},
        datetime.now(UTC),
    )
    await store.append(sid, [UserEmailChanged(email="later@example.com")], expected_version=1)
    await store.append(sid, [UserVerified()], expected_version=2)
    back = await store.read_stream(sid)
    assert back[0].event.email == EMAIL  # type: ignore[attr-defined]  # the log gives the Event union
    assert back[1].event.email == "later@example.com"  # type: ignore[attr-defined]  # the log gives the Event union
    assert EMAIL in await raw_dump(engine)  # the legacy row is still clear

    await erase(engine, store, sid, 3)
    dump = await raw_dump(engine)
    for clear in (EMAIL, HASH, "later@example.com"):
        assert clear not in dump
    assert all(r.erased for r in await store.read_stream(sid))


async def test_concurrent_first_sealed_appends_to_a_legacy_stream_leave_one_key(
    engine: AsyncEngine, store: EventStore
) -> None:
    sid = uuid.uuid4()
    await insert_raw(engine, sid, 1, "UserVerified", 1, {}, datetime.now(UTC))

    async def change(i: int) -> list[RecordedEvent] | Exception:
        own = EventStore(engine, crypto=Crypto(store.crypto.keyring))  # type: ignore[union-attr]  # the store was made with a Crypto
        try:
            return await own.append(
                sid, [UserEmailChanged(email=f"n{i}@example.com")], expected_version=1
            )
        except Exception as exc:  # noqa: BLE001  # the outcomes are compared below
            return exc

    results = await asyncio.gather(*(change(i) for i in range(8)))
    winners = [r for r in results if isinstance(r, list)]
    assert len(winners) == 1, results
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(data_keys)) == 1
        assert await conn.scalar(text("SELECT count(*) FROM events")) == 2
    back = await store.read_stream(sid)
    assert back[1].event == winners[0][0].event
