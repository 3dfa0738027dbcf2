"""The contract of the event log (`events.port.EventLog`), one test case for every store.

A backend's test module subclasses `StoreContract` and gives it a `store` fixture: an empty
log (eventsourcing's `tests/persistence.py` pattern). Only the port is used here, so what
passes for one store passes for any.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from events import (
    ConcurrencyError,
    Cursor,
    Event,
    InvalidEventError,
    Metadata,
    RecordedEvent,
    UserEmailChanged,
    UserRegistered,
    UserVerified,
    shard_of,
)
from events.port import EventLog

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
META = Metadata(command_id="cmd-1", correlation_id="corr-1", actor="ops")
#: how long a reader may wait for the log to release committed events (on PostgreSQL any
#: transaction still open on the server holds back what may be read)
RELEASE_TIMEOUT = 15.0


def registered(n: int = 0) -> UserRegistered:
    return UserRegistered(email=f"user{n}@example.com", hashed_password="$argon2id$hash")


async def read_all(
    store: EventLog, count: int, cursor: Cursor | None = None
) -> list[RecordedEvent]:
    """The next `count` events after `cursor`, read in pages of at most three."""
    found: list[RecordedEvent] = []
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while len(found) < count:
        after = found[-1].cursor if found else (cursor or Cursor.start())
        page = await store.read_after(after, limit=min(3, count - len(found)))
        found += page
        if not page:
            assert time.monotonic() < deadline, f"{len(found)} of {count} events released"
            await asyncio.sleep(0.02)
    return found


class StoreContract:
    """What every event store does. Subclasses provide the `store` fixture."""

    # ------------------------------------------------------------ appending and reading
    async def test_an_append_is_read_back_in_version_order(self, store: EventLog) -> None:
        sid = uuid.uuid4()
        batch: list[Event] = [registered(), UserVerified(), UserEmailChanged(email="b@x.io")]
        appended = await store.append(sid, batch, expected_version=0, metadata=META, recorded_at=T0)
        assert [r.stream_version for r in appended] == [1, 2, 3]
        assert [r.event for r in appended] == batch
        read = await store.read_stream(sid)
        assert read == appended
        assert all(r.metadata == META and r.recorded_at == T0 for r in read)
        assert len({r.event_id for r in read}) == 3
        assert [r.position for r in read] == sorted(r.position for r in read)
        assert await store.stream_version(sid) == 3
        head = await store.head()
        assert (head.count, head.position) == (3, appended[-1].position)

    async def test_streams_do_not_mix_and_a_string_id_is_the_same_stream(
        self, store: EventLog
    ) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        await store.append(str(a), [registered(1)], expected_version=0)
        await store.append(b, [registered(2), UserVerified()], expected_version=0)
        await store.append(a, [UserVerified()], expected_version=1)
        assert [r.event for r in await store.read_stream(str(a).upper())] == [
            registered(1),
            UserVerified(),
        ]
        assert [r.stream_version for r in await store.read_stream(b)] == [1, 2]
        assert await store.stream_version(uuid.uuid4()) == 0
        assert await store.read_stream(uuid.uuid4()) == []

    # ------------------------------------------------------------ optimistic concurrency
    @pytest.mark.parametrize("expected", [0, 1, 3])  # the stream exists; stale; early
    async def test_an_append_at_another_version_fails_and_writes_nothing(
        self, store: EventLog, expected: int
    ) -> None:
        sid = uuid.uuid4()
        await store.append(sid, [registered(), UserVerified()], expected_version=0)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(sid, [UserVerified()] * 2, expected_version=expected)
        assert (caught.value.stream_id, caught.value.expected_version) == (sid, expected)
        assert caught.value.actual_version == 2
        assert await store.stream_version(sid) == 2
        assert (await store.head()).count == 2

    async def test_of_concurrent_appends_at_one_version_exactly_one_wins(
        self, store: EventLog
    ) -> None:
        sid = uuid.uuid4()
        await store.append(sid, [registered()], expected_version=0)

        async def attempt() -> bool:
            try:
                await store.append(sid, [UserVerified()], expected_version=1)
            except ConcurrencyError:
                return False
            return True

        assert sorted(await asyncio.gather(*(attempt() for _ in range(8)))) == [False] * 7 + [True]
        assert await store.stream_version(sid) == 2

    async def test_of_concurrent_new_streams_with_one_id_exactly_one_is_written(
        self, store: EventLog
    ) -> None:
        sid = uuid.uuid4()
        outcomes = await asyncio.gather(
            *(store.append(sid, [registered(n)], expected_version=0) for n in range(6)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, ConcurrencyError) for o in outcomes) == 5
        (winner,) = [o for o in outcomes if isinstance(o, list)]
        assert await store.read_stream(sid) == winner

    # ------------------------------------------------------------ refusals
    @pytest.mark.parametrize(
        ("stream_id", "events", "expected", "when", "message"),
        [
            ("nope", [registered()], 0, None, "stream id must be a UUID"),
            (uuid.uuid4(), [], 0, None, "at least one event"),
            (uuid.uuid4(), registered(), 0, None, "sequence of events"),
            (uuid.uuid4(), [registered()], -1, None, "expected version"),
            (uuid.uuid4(), [registered()], 0, datetime(2030, 1, 1), "timezone-aware"),
        ],
    )
    async def test_a_malformed_append_is_refused_whole(
        self,
        store: EventLog,
        stream_id: object,
        events: object,
        expected: int,
        when: datetime | None,
        message: str,
    ) -> None:
        with pytest.raises(InvalidEventError, match=message):
            await store.append(
                stream_id,  # type: ignore[arg-type]
                events,  # type: ignore[arg-type]
                expected_version=expected,
                recorded_at=when,
            )
        assert (await store.head()).count == 0

    async def test_reads_refuse_bad_arguments(self, store: EventLog) -> None:
        with pytest.raises(InvalidEventError, match="stream id must be a UUID"):
            await store.read_stream("nope")
        with pytest.raises(InvalidEventError, match="stream id must be a UUID"):
            await store.stream_version("nope")
        with pytest.raises(InvalidEventError, match="timezone-aware"):
            await store.read_stream(uuid.uuid4(), until=datetime(2030, 1, 1))

    # ------------------------------------------------------------ reading a stream in part
    async def test_read_stream_up_to_a_version_a_time_or_a_page(self, store: EventLog) -> None:
        sid = uuid.uuid4()
        for i, event in enumerate([registered(), UserVerified(), UserVerified(), UserVerified()]):
            await store.append(
                sid, [event], expected_version=i, recorded_at=T0 + timedelta(hours=i)
            )

        async def versions(**kwargs: object) -> list[int]:
            return [r.stream_version for r in await store.read_stream(sid, **kwargs)]  # type: ignore[arg-type]

        assert await versions(to_version=2) == [1, 2]
        assert await versions(to_version=0) == []
        assert await versions(until=T0 - timedelta(microseconds=1)) == []
        assert await versions(until=T0 + timedelta(minutes=61)) == [1, 2]
        assert await versions(after_version=1, limit=2) == [2, 3]
        assert await versions(after_version=3) == [4]

    # ------------------------------------------------------------ the log after a cursor
    async def test_the_log_is_read_after_a_cursor_without_skipping(self, store: EventLog) -> None:
        streams = [uuid.uuid4() for _ in range(4)]
        appended: list[RecordedEvent] = []
        for round_ in range(2):
            for sid in streams:
                appended += await store.append(sid, [registered()], expected_version=round_)
        log = await read_all(store, len(appended))
        assert sorted(r.event_id for r in log) == sorted(r.event_id for r in appended)
        order = [(r.tx_id, r.position) for r in log]
        assert order == sorted(order)
        for sid in streams:  # each stream in version order
            assert [r.stream_version for r in log if r.stream_id == sid] == [1, 2]
        # a reader that resumes from a checkpoint gets exactly the rest
        assert await read_all(store, 5, log[2].cursor) == log[3:]
        assert await store.read_after(log[-1].cursor) == []

    async def test_reads_by_shard_and_several_cursors_at_once(self, store: EventLog) -> None:
        ids = [uuid.uuid4() for _ in range(6)]
        for sid in ids:
            await store.append(sid, [registered()], expected_version=0)
        log = await read_all(store, len(ids))
        some = sorted({shard_of(ids[0]), shard_of(ids[1])})
        others = sorted({shard_of(i) for i in ids} - set(some))
        mine = await store.read_after(Cursor.start(), shards=some)
        assert mine == [r for r in log if r.shard in some]
        both = await store.read_after_each(
            [(Cursor.start(), some), (log[0].cursor, others)], limit=100
        )
        expected = [r for i, r in enumerate(log) if r.shard in some or (r.shard in others and i)]
        assert both == expected
        assert len(await store.read_after_each([(Cursor.start(), some + others)], limit=2)) == 2

    async def test_iter_after_gives_the_log_in_batches(self, store: EventLog) -> None:
        for _ in range(5):
            await store.append(uuid.uuid4(), [registered()], expected_version=0)
        log = await read_all(store, 5)
        batches = [batch async for batch in store.iter_after(Cursor.start(), batch_size=2)]
        assert [len(b) for b in batches] == [2, 2, 1]
        assert [r for b in batches for r in b] == log

    # ------------------------------------------------------------ waiting
    async def test_an_append_wakes_a_waiter_at_once(self, store: EventLog) -> None:
        waiter = asyncio.create_task(store.wait_for_events(30))
        await asyncio.sleep(0)  # the waiter takes its place
        started = time.monotonic()
        async with store.listening():
            await store.append(uuid.uuid4(), [registered()], expected_version=0)
            assert await asyncio.wait_for(waiter, 5) is True
        assert time.monotonic() - started < store.slow_poll

    async def test_committed_wakes_a_waiter_and_nothing_times_out(self, store: EventLog) -> None:
        assert await store.wait_for_events(0.01) is False
        waiter = asyncio.create_task(store.wait_for_events(30))
        await asyncio.sleep(0)
        store.committed()
        assert await asyncio.wait_for(waiter, 5) is True

    async def test_forgetting_a_key_leaves_the_stream_readable(self, store: EventLog) -> None:
        sid = uuid.uuid4()
        await store.append(sid, [registered()], expected_version=0)
        store.forget_key(sid)
        await store.append(sid, [UserVerified()], expected_version=1)
        assert [r.event for r in await store.read_stream(sid)] == [registered(), UserVerified()]
