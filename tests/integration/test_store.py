"""The event store's contract on SQLite and PostgreSQL: round trips, optimistic concurrency,
upcasting, refusal of bad input, reading a stream up to a version or a time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    ConcurrencyError,
    CorruptEventError,
    Cursor,
    Event,
    EventStore,
    InvalidEventError,
    Metadata,
    RecordedEvent,
    UnknownEventTypeError,
    UserActivated,
    UserEmailChanged,
    UserProfileUpdated,
    UserRegistered,
    UserVerified,
)
from tests.support.store import (
    HASH,
    count_rows,
    insert_raw,
    open_store,
    read_log,
    samples,
)
from tests.support.waiting import eventually

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
META = Metadata(command_id="cmd-1", correlation_id="corr-1", causation_id="cause-1", actor="ops")


@pytest.fixture
async def store(engine: AsyncEngine) -> EventStore:
    return await open_store(engine)


def registered(n: int = 0) -> UserRegistered:
    return UserRegistered(email=f"user{n}@example.com", hashed_password=HASH)


def envelope(r: RecordedEvent) -> tuple[Any, ...]:
    return (
        r.position,
        r.tx_id,
        r.stream_id,
        r.stream_version,
        r.event_id,
        r.event_type,
        r.schema_version,
        r.event,
        r.metadata,
        r.recorded_at,
    )


# ---------------------------------------------------------------- round trips
async def test_every_event_type_round_trips_with_metadata_and_time(
    store: EventStore, backend: str
) -> None:
    sid = uuid.uuid4()
    batch = samples()
    with freeze_time(T0, real_asyncio=True):
        appended = await store.append(sid, batch, expected_version=0, metadata=META)
    assert [r.stream_version for r in appended] == list(range(1, len(batch) + 1))
    assert [r.event for r in appended] == batch

    read = await store.read_stream(sid)
    assert [envelope(r) for r in read] == [envelope(r) for r in appended]
    for r, original in zip(read, batch, strict=True):
        assert type(r.event) is type(original)
        assert r.event == original
        assert r.event_type == original.event_type
        assert r.schema_version == original.schema_version
        assert r.metadata == META
        assert r.recorded_at == T0
        assert r.recorded_at.utcoffset() == timedelta(0)
        assert (r.tx_id > 0) is (backend == "postgresql")
    # the same events through the log-wide reader
    after = await read_log(store, len(batch))
    assert [envelope(r) for r in after] == [envelope(r) for r in appended]
    assert await store.stream_version(sid) == len(batch)
    head = await store.head()
    assert (head.count, head.position) == (len(batch), appended[-1].position)


async def test_each_event_type_alone_keeps_its_own_time_and_metadata(store: EventStore) -> None:
    sid = uuid.uuid4()
    for i, item in enumerate(samples()):
        meta = {"command_id": f"c{i}", "actor": f"actor-{i}"} if i % 2 else None
        with freeze_time(T0 + timedelta(minutes=i), real_asyncio=True):
            await store.append(sid, [item], expected_version=i, metadata=meta)
    read = await store.read_stream(sid)
    assert [r.event for r in read] == samples()
    for i, r in enumerate(read):
        assert r.recorded_at == T0 + timedelta(minutes=i)
        expected = Metadata(command_id=f"c{i}", actor=f"actor-{i}") if i % 2 else Metadata()
        assert r.metadata == expected
    assert len({r.event_id for r in read}) == len(read)
    positions = [r.position for r in read]
    assert positions == sorted(positions)


async def test_streams_do_not_mix(store: EventStore) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await store.append(a, [registered(1)], expected_version=0)
    await store.append(b, [registered(2), UserVerified()], expected_version=0)
    await store.append(a, [UserVerified()], expected_version=1)
    assert [r.event for r in await store.read_stream(a)] == [registered(1), UserVerified()]
    assert [r.stream_version for r in await store.read_stream(b)] == [1, 2]
    assert await store.stream_version(uuid.uuid4()) == 0
    assert await store.read_stream(uuid.uuid4()) == []


async def test_append_accepts_a_uuid_string_and_an_explicit_time(store: EventStore) -> None:
    sid = uuid.uuid4()
    when = datetime(2030, 1, 1, 12, tzinfo=UTC) + timedelta(microseconds=7)
    (r,) = await store.append(str(sid), [registered()], expected_version=0, recorded_at=when)
    assert r.stream_id == sid
    (read,) = await store.read_stream(str(sid).upper())
    assert read.recorded_at == when
    assert read.event_id == r.event_id


# ---------------------------------------------------------------- optimistic concurrency
async def test_stale_expected_version_fails_and_appends_nothing(
    store: EventStore, engine: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    await store.append(sid, [registered(), UserVerified()], expected_version=0)
    for stale in (0, 1):
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(
                sid, [UserActivated(), UserEmailChanged(email="x@y.z")], expected_version=stale
            )
        err = caught.value
        assert (err.stream_id, err.expected_version, err.actual_version) == (sid, stale, 2)
        assert f"expected version {stale}" in str(err)
        assert "at version 2" in str(err)
        assert "nothing was appended" in str(err)
    assert await count_rows(engine, sid) == 2
    assert [r.stream_version for r in await store.read_stream(sid)] == [1, 2]


async def test_second_new_stream_append_fails(store: EventStore, engine: AsyncEngine) -> None:
    sid = uuid.uuid4()
    await store.append(sid, [registered(1)], expected_version=0)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append(sid, [registered(2), UserVerified()], expected_version=0)
    assert (caught.value.expected_version, caught.value.actual_version) == (0, 1)
    assert [r.event for r in await store.read_stream(sid)] == [registered(1)]
    assert await count_rows(engine) == 1


@pytest.mark.parametrize("existing", [0, 2])
async def test_expected_version_ahead_of_the_stream_fails_without_a_gap(
    store: EventStore, engine: AsyncEngine, existing: int
) -> None:
    sid = uuid.uuid4()
    if existing:
        await store.append(sid, [registered(), UserVerified()], expected_version=0)
    for ahead in (existing + 1, existing + 5):
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(sid, [UserActivated()], expected_version=ahead)
        assert (caught.value.expected_version, caught.value.actual_version) == (ahead, existing)
    assert await count_rows(engine) == existing
    # the right expectation still works, and versions stay contiguous
    more = [registered()] if existing == 0 else [UserActivated()]
    await store.append(sid, more, expected_version=existing)
    versions = [r.stream_version for r in await store.read_stream(sid)]
    assert versions == list(range(1, existing + 2))


async def test_a_failed_append_in_the_callers_transaction_writes_nothing(
    store: EventStore, engine: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    await store.append(sid, [registered()], expected_version=0)
    with pytest.raises(ConcurrencyError) as caught:
        async with engine.begin() as conn:
            await store.append(
                sid, [UserVerified(), UserActivated()], expected_version=0, conn=conn
            )
    assert caught.value.actual_version == 1
    with pytest.raises(ConcurrencyError):
        async with engine.begin() as conn:
            await store.append(sid, [UserVerified()], expected_version=4, conn=conn)
    assert await count_rows(engine) == 1
    async with engine.begin() as conn:
        done = await store.append(sid, [UserVerified()], expected_version=1, conn=conn)
    store.committed()
    assert [r.stream_version for r in done] == [2]
    assert await count_rows(engine) == 2


# ---------------------------------------------------------------- upcasting and unknown types
async def test_a_stored_v1_user_registered_is_upcast_on_read(
    store: EventStore, engine: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    v1 = {"email": "old@example.com", "password_hash": "legacy-hash", "is_verified": True}
    await insert_raw(engine, sid, 1, "UserRegistered", 1, v1, T0)
    await store.append(sid, [UserVerified()], expected_version=1)
    first, second = await store.read_stream(sid)
    assert first.schema_version == 1  # as stored; the event itself is current
    assert first.event == UserRegistered(
        email="old@example.com", hashed_password="legacy-hash", is_verified=True, profile={}
    )
    assert first.recorded_at == T0
    assert first.metadata == Metadata(actor="legacy")
    assert second.schema_version == 1
    assert second.event == UserVerified()
    (again, _) = await read_log(store, 2)
    assert again.event == first.event


@pytest.mark.parametrize(
    ("event_type", "schema_version", "named"),
    [("UserTeleported", 1, "UserTeleported"), ("UserRegistered", 3, "UserRegistered")],
)
async def test_an_unknown_stored_type_fails_the_read_naming_it(
    store: EventStore, engine: AsyncEngine, event_type: str, schema_version: int, named: str
) -> None:
    sid = uuid.uuid4()
    await insert_raw(engine, sid, 1, event_type, schema_version, {"where": "mars"}, T0)
    with pytest.raises(UnknownEventTypeError) as caught:
        await store.read_stream(sid)
    errors = [caught.value]

    async def refused() -> bool:
        try:
            await store.read_after(Cursor.start())  # [] while PostgreSQL holds it back
        except UnknownEventTypeError as exc:
            errors.append(exc)
            return True
        return False

    await eventually(
        refused, timeout=15, interval=0.01, message="read_after to reach the unknown event"
    )
    for error in errors:
        assert error.event_type == named
        assert repr(named) in str(error)
        if schema_version != 1:
            assert error.schema_version == schema_version
            assert f"schema version {schema_version}" in str(error)


async def test_a_stored_payload_that_does_not_match_its_model_fails_the_read(
    store: EventStore, engine: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    await store.append(sid, [registered()], expected_version=0)
    await insert_raw(engine, sid, 2, "UserEmailChanged", 1, {"email": 5, "x": HASH}, T0)
    with pytest.raises(CorruptEventError) as caught:
        await store.read_stream(sid)
    err = caught.value
    assert (err.event_type, err.schema_version) == ("UserEmailChanged", 1)
    assert f"position {err.position}" in str(err)
    assert "email" in str(err)
    assert HASH not in str(err), "stored values are not echoed"
    assert len(await store.read_stream(sid, to_version=1)) == 1


# ---------------------------------------------------------------- bad input
class NotInCatalog(Event):
    event_type: ClassVar[str] = "UserTeleported"


class Impostor(Event):
    event_type: ClassVar[str] = "UserVerified"  # a catalog name on a foreign class


class SubclassedRegistration(UserRegistered):
    pass


def _bad_events() -> list[tuple[str, Any, str]]:
    return [
        ("empty", [], "at least one event"),
        ("too many", [UserVerified()] * 1001, "at most 1000"),
        ("dict", [{"event_type": "UserVerified"}], "not an event of the catalog"),
        ("unknown type", [NotInCatalog()], "UserTeleported"),
        ("impostor", [Impostor()], "not an event of the catalog"),
        (
            "subclass",
            [SubclassedRegistration(email="a@b.c", hashed_password=HASH)],
            "SubclassedRegistration",
        ),
        ("one event, not a list", UserVerified(), "a sequence of events"),
        (
            "constructed, invalid field",
            [UserRegistered.model_construct(email="x", hashed_password=HASH)],
            "UserRegistered",
        ),
        (
            "constructed, missing field",
            [UserRegistered.model_construct(email="a@b.c")],
            "hashed_password",
        ),
        (
            "constructed, wrong type",
            [UserRegistered.model_construct(email="a@b.c", hashed_password=HASH, is_active="yes")],
            "is_active",
        ),
        ("constructed, empty changes", [UserProfileUpdated.model_construct(changes={})], "changes"),
        ("not JSON", [UserProfileUpdated(changes={"x": object()})], "JSON"),
        ("NaN", [UserProfileUpdated(changes={"x": float("nan")})], "JSON"),
        ("NUL", [UserProfileUpdated(changes={"x": "a\x00b"})], "NUL"),
        ("NUL in a key", [UserProfileUpdated(changes={"a\x00": 1})], "NUL"),
        ("infinity", [UserProfileUpdated(changes={"x": [float("inf")]})], "JSON"),
        ("lone surrogate", [UserProfileUpdated(changes={"x": "\ud800"})], "JSON"),
        (
            "too long",
            [
                UserRegistered(email="a@b.c", hashed_password="h").model_copy(
                    update={"hashed_password": HASH * 100}
                )
            ],
            "hashed_password",
        ),
    ]


@pytest.mark.parametrize(
    ("payload", "message"), [c[1:] for c in _bad_events()], ids=[c[0] for c in _bad_events()]
)
async def test_bad_events_are_refused_whole(
    store: EventStore,
    engine: AsyncEngine,
    payload: Any,  # noqa: ANN401  # deliberately not events: what the store must refuse
    message: str,
) -> None:
    sid = uuid.uuid4()
    with pytest.raises(InvalidEventError) as caught:
        await store.append(sid, payload, expected_version=0)
    assert message in str(caught.value)
    assert HASH not in str(caught.value), "secrets never in error messages"
    # a valid event before the bad one is not written either
    if isinstance(payload, list) and payload:
        with pytest.raises(InvalidEventError):
            await store.append(sid, [registered(), *payload], expected_version=0)
    assert await count_rows(engine) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream_id": "not-a-uuid"}, "stream id must be a UUID"),
        ({"stream_id": 42}, "stream id must be a UUID"),
        ({"stream_id": None}, "stream id must be a UUID"),
        ({"expected_version": -1}, "expected version"),
        ({"expected_version": True}, "expected version"),
        ({"expected_version": 1.0}, "expected version"),
        ({"expected_version": "0"}, "expected version"),
        ({"expected_version": 2**31 - 1}, "expected version"),
        ({"metadata": {"actor": "ops", "colour": "red"}}, "metadata"),
        ({"metadata": {"command_id": "x" * 201}}, "metadata"),
        ({"metadata": "ops"}, "metadata"),
        ({"recorded_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"recorded_at": "2030-01-01T00:00:00Z"}, "recorded_at"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
async def test_bad_requests_are_refused_precisely(
    store: EventStore, engine: AsyncEngine, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"stream_id": uuid.uuid4(), "expected_version": 0, **kwargs}
    with pytest.raises(InvalidEventError) as caught:
        await store.append(args.pop("stream_id"), [registered()], **args)
    assert message in str(caught.value)
    assert await count_rows(engine) == 0


async def test_reads_refuse_bad_arguments(store: EventStore) -> None:
    with pytest.raises(InvalidEventError, match="stream id must be a UUID"):
        await store.read_stream("nope")
    with pytest.raises(InvalidEventError, match="stream id must be a UUID"):
        await store.stream_version("nope")
    with pytest.raises(InvalidEventError, match="timezone-aware"):
        await store.read_stream(uuid.uuid4(), until=datetime(2030, 1, 1))


# ---------------------------------------------------------------- reading a stream
async def test_read_stream_up_to_a_version_or_a_time(store: EventStore) -> None:
    sid = uuid.uuid4()
    steps: list[list[Event]] = [
        [registered()],
        [UserVerified(), UserEmailChanged(email="b@example.com")],
        [UserProfileUpdated(changes={"first_name": "B"})],
    ]
    for i, step in enumerate(steps):
        with freeze_time(T0 + timedelta(hours=i), real_asyncio=True):
            version = await store.stream_version(sid)
            await store.append(sid, step, expected_version=version)

    async def versions(
        *, to_version: int | None = None, until: datetime | None = None
    ) -> list[int]:
        found = await store.read_stream(sid, to_version=to_version, until=until)
        return [r.stream_version for r in found]

    assert await versions() == [1, 2, 3, 4]
    assert await versions(to_version=0) == []
    assert await versions(to_version=2) == [1, 2]
    assert await versions(to_version=9) == [1, 2, 3, 4]
    assert await versions(until=T0 - timedelta(microseconds=1)) == []
    assert await versions(until=T0) == [1]
    assert await versions(until=T0 + timedelta(minutes=59)) == [1]
    assert await versions(until=T0 + timedelta(hours=1)) == [1, 2, 3]
    assert await versions(until=T0 + timedelta(hours=5)) == [1, 2, 3, 4]
    # the same instant in another zone is the same instant
    cet = T0.astimezone(ZoneInfo("Europe/Paris")) + timedelta(hours=1)
    assert await versions(until=cet) == [1, 2, 3]
    assert await versions(until=T0 + timedelta(hours=2), to_version=3) == [1, 2, 3]
