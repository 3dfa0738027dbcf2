"""The event store: append with an expected version, read a stream, read the whole log in
commit-safe order after a checkpoint, and wait for new events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    func,
    insert,
    literal,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import checks
from events.catalog import Event
from events.checks import MAX_EVENTS_PER_APPEND
from events.crypto import Crypto, crypto_of
from events.engine import asyncpg_dsn
from events.envelope import Cursor, Metadata, RecordedEvent, shard_of
from events.errors import ConcurrencyError, InvalidEventError
from events.notify import Wakeup, pg_listening
from events.statements import (
    COLUMNS,
    EVENTS_WITH_KEYS,
    PG_INSERT_ROWS,
    PG_INSERT_ROWS_AND_KEYS,
    PG_READ_HORIZON,
    SQLITE_INSERT_KEY,
    decode,
    guarded_insert,
    guarded_params,
    pg_after_each,
    pg_columns,
    sqlite_guarded_insert,
)
from events.tables import NOTIFY_CHANNEL, data_keys, events

#: how often a waiter re-checks the log when no wake-up arrives (a missed NOTIFY, or a writer
#: in another process on SQLite)
SLOW_POLL_SECONDS = {"postgresql": 2.0, "sqlite": 0.25}
__all__ = ["MAX_EVENTS_PER_APPEND", "EventStore", "LogHead", "decode"]


@dataclass(frozen=True, slots=True)
class LogHead:
    """How big the log is: its event count and highest position (0 when empty)."""

    count: int
    position: int


_as_uuid = checks.stream_uuid

#: PostgreSQL group commit: at most this many group INSERTs in flight per store; appends that
#: arrive meanwhile are queued and go together in the next one (an idle store sends at once)
GROUP_COMMIT_INFLIGHT = 2

_Returned = dict[int, tuple[int, int]]
#: a queued group-commit append: stream, rows, its new data key row (if any), its result
_Queued = tuple[uuid.UUID, list[dict[str, Any]], dict[str, Any] | None, "asyncio.Future[_Returned]"]
#: `EventStore(crypto=...)` not given: use what is attached to the engine
_ATTACHED: Any = object()
INSERT_KEY = insert(data_keys)


class _Conflict(Exception):
    """The stream is not at the expected version (resolved into a `ConcurrencyError`)."""


_WAKEUPS: weakref.WeakKeyDictionary[Any, Wakeup] = weakref.WeakKeyDictionary()


def engine_wakeup(engine: AsyncEngine) -> Wakeup:
    """One signal per engine: every `EventStore` on it (a writer's and an in-process
    projector's) shares it, so a commit by one wakes the others at once."""
    wakeup = _WAKEUPS.get(engine.sync_engine)
    if wakeup is None:
        wakeup = _WAKEUPS[engine.sync_engine] = Wakeup()
    return wakeup


class EventStore:
    """The append-only log of user events.

    Appends are atomic per call. An append that is given `conn` joins the caller's transaction
    (so that other rows, such as an email reservation, commit with the events); the caller
    then calls `committed()` once its transaction has committed, to wake in-process waiters.

    On PostgreSQL, concurrent appends to new streams (expected version 0, no `conn`) share
    group commits: see `_grouped`. Each still succeeds or fails on its own.
    """

    def __init__(self, engine: AsyncEngine, *, crypto: Crypto | None = _ATTACHED) -> None:
        self.engine = engine
        self._crypto = crypto
        self.dialect = engine.dialect.name
        self.wakeup = engine_wakeup(engine)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._queue: list[_Queued] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._kicked = False

    # ------------------------------------------------------------------ writing
    async def append(
        self,
        stream_id: uuid.UUID | str,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata | dict[str, Any] | None = None,
        conn: AsyncConnection | None = None,
        recorded_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """Append `new_events` to a stream whose head must be `expected_version` (0: new stream).

        Raises `ConcurrencyError` when the stream is not at `expected_version` and
        `InvalidEventError` for a malformed request; in both cases nothing is written.
        """
        sid = checks.stream_uuid(stream_id)
        checked = checks.events_and_payloads(new_events)
        version = checks.expected_version(expected_version, len(checked))
        meta = checks.metadata(metadata)
        when = checks.recorded_at(datetime.now(UTC) if recorded_at is None else recorded_at)
        meta_json = meta.as_json()
        ids = [uuid.uuid4() for _ in checked]
        rows: list[dict[str, Any]] = [
            {
                "stream_id": sid,
                "stream_version": version + i,
                "shard": shard_of(sid),
                "event_id": ids[i - 1],
                "event_type": item.event_type,
                "schema_version": item.schema_version,
                "data": data,
                "metadata": meta_json,
                "recorded_at": when,
                "sealed": None,
            }
            for i, (item, data) in enumerate(checked, start=1)
        ]
        pg_existing = conn is None and self.dialect == "postgresql" and version > 0
        key_row = None if pg_existing else await self._seal(sid, version, rows, conn)
        try:
            if conn is not None:
                returned = await self._insert(conn, sid, version, rows, key_row)
            elif self.dialect == "postgresql" and version == 0:
                returned = await self._grouped(sid, rows, key_row)
            elif pg_existing:
                # one statement is its own transaction: no BEGIN/COMMIT round trips; a key
                # not cached is read on the same connection first
                async with self._autocommit.connect() as own:
                    key_row = await self._seal(sid, version, rows, own)
                    if key_row is None:
                        returned = await self._insert(own, sid, version, rows)
                if key_row is not None:  # a stream written before encryption: its first key
                    async with self.engine.begin() as own:
                        returned = await self._insert(own, sid, version, rows, key_row)
            else:
                async with self.engine.begin() as own:
                    returned = await self._insert(own, sid, version, rows, key_row)
        except _Conflict as conflict:
            self._unstored(sid, key_row)
            # looked up once our own connection is back in the pool (or on the caller's
            # connection while its transaction is still usable)
            actual = await self._version_after_failure(sid, conn, aborted=conflict.args[0])
            raise ConcurrencyError(sid, version, actual) from conflict.__cause__
        except BaseException:
            self._unstored(sid, key_row)
            raise
        if conn is None:
            self.committed()
        return [
            RecordedEvent(
                position=returned[version + i][0],
                tx_id=returned[version + i][1],
                stream_id=sid,
                stream_version=version + i,
                event_id=ids[i - 1],
                event_type=item.event_type,
                schema_version=item.schema_version,
                event=item,
                metadata=meta,
                recorded_at=when,
            )
            for i, (item, _) in enumerate(checked, start=1)
        ]

    @property
    def crypto(self) -> Crypto | None:
        """What seals and opens personal data on this engine (`events.crypto.attach`)."""
        return self._crypto if self._crypto is not _ATTACHED else crypto_of(self.engine)

    def _unstored(self, sid: uuid.UUID, key_row: dict[str, Any] | None) -> None:
        """The append failed: a data key it made was not stored, so it must not stay cached
        (the stream's next events would be sealed with a key nobody can read back). A caller
        whose transaction fails after the append calls `forget_key` itself."""
        if key_row is not None:
            self.forget_key(sid)

    def forget_key(self, stream_id: uuid.UUID) -> None:
        """Drop the stream's cached data key: call when a transaction that appended to it with
        `conn=` rolls back (the key may have been made in it, and is then not stored)."""
        crypto = self.crypto
        if crypto is not None:
            crypto.forget(stream_id)

    async def _seal(
        self,
        sid: uuid.UUID,
        version: int,
        rows: list[dict[str, Any]],
        conn: AsyncConnection | None,
    ) -> dict[str, Any] | None:
        """Encrypt the rows' personal values in place; the stream's new key row to insert with
        them, if it had none. Raises `StreamErasedError` (nothing written) for an erased one."""
        crypto = self.crypto
        if crypto is None or not any(crypto.personal(r["event_type"]) for r in rows):
            return None
        key_row = None
        key = None if version == 0 else crypto.cached(sid)
        if key is None and version > 0:
            if conn is not None:
                key = await crypto.stored_key(conn, sid)
            else:
                async with self.engine.connect() as own:
                    key = await crypto.stored_key(own, sid)
        if key is None:  # a new stream, or one written before encryption
            key, key_row = crypto.new_key(sid)
        for row in rows:
            if crypto.personal(row["event_type"]):
                row["data"], row["sealed"] = crypto.seal(
                    key, sid, row["stream_version"], row["event_type"], row["data"]
                )
        return key_row

    async def _insert(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        expected_version: int,
        rows: list[dict[str, Any]],
        key_row: dict[str, Any] | None = None,
    ) -> dict[int, tuple[int, int]]:
        """Insert the rows (and the stream's new data key row after them); {stream_version:
        (position, tx_id)}. Raises `_Conflict(aborted)` when the stream is not at
        `expected_version`."""
        if self.dialect != "postgresql":
            return await self._sqlite_insert(conn, sid, expected_version, rows, key_row)
        try:
            # the INSERT is the transaction's first write: on PostgreSQL that is when the
            # transaction id (and so the reading order) is assigned, after the stream was read
            if expected_version == 0:
                # one statement, also for the stream's new data key row
                stmt = PG_INSERT_ROWS_AND_KEYS if key_row is not None else PG_INSERT_ROWS
                keys = [key_row] if key_row is not None else []
                result = await conn.execute(stmt, pg_columns(rows, keys))
                key_row = None
            else:
                params = guarded_params(rows, sid, expected_version)
                result = await conn.execute(guarded_insert(len(rows)), params)
        except IntegrityError as exc:
            # a stale expectation trips the unique index (and aborts the transaction)
            raise _Conflict(True) from exc
        returned = {r.stream_version: (r.position, r.tx_id) for r in result}
        if len(returned) != len(rows):  # the expected version is not there
            raise _Conflict(False)
        if key_row is not None:
            try:
                await conn.execute(INSERT_KEY, key_row)
            except IntegrityError as exc:  # another writer gave this stream a key first
                raise _Conflict(True) from exc
        return returned

    async def _sqlite_insert(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        expected_version: int,
        rows: list[dict[str, Any]],
        key_row: dict[str, Any] | None,
    ) -> dict[int, tuple[int, int]]:
        """`_insert` on SQLite, where a conflict is found by the rows returned, never by a
        failed statement (see `events.statements.sqlite_guarded_insert`)."""
        params = guarded_params(rows, sid, expected_version)
        result = await conn.execute(sqlite_guarded_insert(len(rows)), params)
        returned = {r.stream_version: (r.position, r.tx_id) for r in result}
        if len(returned) != len(rows):  # the stream is not at the expected version
            raise _Conflict(False)
        if key_row is not None and (await conn.execute(SQLITE_INSERT_KEY, key_row)).first() is None:
            raise _Conflict(False)  # another writer gave this stream a key first
        return returned

    # ------------------------------------------------------------------ group commit
    async def _grouped(
        self, sid: uuid.UUID, rows: list[dict[str, Any]], key_row: dict[str, Any] | None
    ) -> _Returned:
        """PostgreSQL, own transaction, new stream: the append joins a group commit. Appends
        that arrive while GROUP_COMMIT_INFLIGHT INSERTs are in flight go together in one
        multi-row INSERT (one statement, one transaction, one NOTIFY). A group that trips the
        unique index is retried one append at a time, so each append still succeeds or fails
        on its own; each commits atomically (a group commits as a whole)."""
        future: asyncio.Future[_Returned] = asyncio.get_running_loop().create_future()
        self._queue.append((sid, rows, key_row, future))
        self._kick()
        # the flush runs in its own task: a cancelled caller stops waiting, but never leaves
        # the other appends of its group unresolved
        return await asyncio.shield(future)

    def _kick(self) -> None:
        """Start flushes once the appends already on their way have queued: the callers a
        group commit just released resume in the same loop iteration, and each one starting
        a flush of its own would send a group of one."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._start_flushes)

    def _start_flushes(self) -> None:
        self._kicked = False
        while self._queue and len(self._inflight) < GROUP_COMMIT_INFLIGHT:
            # the waiting appends shared among the free flights: two half groups commit
            # side by side instead of one whole group while a flight stands idle
            share = -(-len(self._queue) // (GROUP_COMMIT_INFLIGHT - len(self._inflight)))
            group: list[_Queued] = []
            count = 0
            while (
                self._queue
                and len(group) < share
                and count + len(self._queue[0][1]) <= MAX_EVENTS_PER_APPEND
            ):
                count += len(self._queue[0][1])
                group.append(self._queue.pop(0))
            task = asyncio.create_task(self._flush(group))
            self._inflight.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._kick()

    async def _flush(self, group: list[_Queued]) -> None:
        try:
            if len(group) > 1:
                keys = [g[2] for g in group if g[2] is not None]
                stmt = PG_INSERT_ROWS_AND_KEYS if keys else PG_INSERT_ROWS
                with contextlib.suppress(IntegrityError):
                    async with self._autocommit.connect() as own:
                        result = await own.execute(
                            stmt, pg_columns([r for g in group for r in g[1]], keys)
                        )
                        found: dict[uuid.UUID, _Returned] = {}
                        for r in result:
                            found.setdefault(r.stream_id, {})[r.stream_version] = (
                                r.position,
                                r.tx_id,
                            )
                    for sid, _, _, future in group:
                        if not future.done():
                            future.set_result(found[sid])
                    return
            # one append, or a group that tripped the unique index: one at a time
            for sid, rows, key_row, future in group:
                try:
                    async with self._autocommit.connect() as own:
                        returned = await self._insert(own, sid, 0, rows, key_row)
                except Exception as exc:  # handed to that append's caller
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(returned)
        except Exception as exc:  # e.g. the database is unreachable: every append fails
            for *_, future in group:
                if not future.done():
                    future.set_exception(exc)
        finally:  # cancelled (the loop is closing): nobody may wait forever
            for *_, future in group:
                future.cancel()

    async def _version_after_failure(
        self, sid: uuid.UUID, conn: AsyncConnection | None, *, aborted: bool
    ) -> int | None:
        with contextlib.suppress(Exception):
            if conn is not None and not aborted:
                return await self.stream_version(sid, conn=conn)
            return await self.stream_version(sid)
        return None

    def committed(self) -> None:
        """Wake in-process waiters: call after committing a transaction that appended."""
        self.wakeup.notify()

    # ------------------------------------------------------------------ reading
    async def stream_version(
        self, stream_id: uuid.UUID | str, *, conn: AsyncConnection | None = None
    ) -> int:
        """The stream's head version (0 when it has no events)."""
        sid = _as_uuid(stream_id, "stream id")
        stmt = select(func.coalesce(func.max(events.c.stream_version), 0)).where(
            events.c.stream_id == sid
        )
        if conn is not None:
            return int(await conn.scalar(stmt) or 0)
        async with self.engine.connect() as own:
            return int(await own.scalar(stmt) or 0)

    async def read_stream(
        self,
        stream_id: uuid.UUID | str,
        *,
        to_version: int | None = None,
        until: datetime | None = None,
        conn: AsyncConnection | None = None,
        after_version: int | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """One stream's events in version order: whole, up to `to_version`, or recorded at or
        before `until`; from after `after_version`, at most `limit` of them (a page)."""
        sid = _as_uuid(stream_id, "stream id")
        stmt = select(*COLUMNS).select_from(EVENTS_WITH_KEYS).where(events.c.stream_id == sid)
        if to_version is not None:
            stmt = stmt.where(events.c.stream_version <= to_version)
        if after_version is not None:
            stmt = stmt.where(events.c.stream_version > after_version)
        if until is not None:
            if until.tzinfo is None:
                raise InvalidEventError("until must be timezone-aware")
            stmt = stmt.where(events.c.recorded_at <= until)
        stmt = stmt.order_by(events.c.stream_version)
        if limit is not None:
            stmt = stmt.limit(limit)
        return await self._fetch(stmt, conn)

    def after_statement(
        self, cursor: Cursor, limit: int, shards: Sequence[int] | None = None
    ) -> Select[Any]:
        """The query behind `read_after` (exposed for streaming readers such as replay)."""
        after = tuple_(events.c.tx_id, events.c.position) > tuple_(
            literal(cursor.tx_id, BigInteger()), literal(cursor.position, BigInteger())
        )
        stmt = select(*COLUMNS).select_from(EVENTS_WITH_KEYS).where(after)
        if self.dialect == "postgresql":
            # Only transactions older than every still-running one: a position taken by a
            # slower transaction that has not committed yet can never be passed over.
            stmt = stmt.where(events.c.tx_id < literal_column(PG_READ_HORIZON))
        if shards is not None:
            stmt = stmt.where(events.c.shard.in_(list(shards)))
        return stmt.order_by(events.c.tx_id, events.c.position).limit(limit)

    async def read_after(
        self,
        cursor: Cursor,
        *,
        limit: int = 1000,
        shards: Sequence[int] | None = None,
        conn: AsyncConnection | None = None,
    ) -> list[RecordedEvent]:
        """Up to `limit` events after `cursor`, in an order that never skips an event.

        On PostgreSQL events are ordered by (writing transaction id, position) and only those
        written by transactions older than the oldest one still running are returned, so an
        event whose position was taken before a slower transaction committed is delivered
        after it commits, never passed over. Each stream's events stay in version order.
        Pass `shards` to read only the streams of those shards.
        """
        return await self._fetch(self.after_statement(cursor, limit, shards), conn)

    async def read_after_each(
        self,
        cursors: Sequence[tuple[Cursor, Sequence[int]]],
        *,
        limit: int = 1000,
        conn: AsyncConnection | None = None,
    ) -> list[RecordedEvent]:
        """`read_after` for several sets of shards at once, each after its own cursor (the
        partitions of a projector): up to `limit` events in all, in log order, so each set's
        events are the next ones after its cursor. On PostgreSQL one prepared statement (an
        ordered merge of one index range per set); on SQLite one read per set, merged."""
        if self.dialect == "postgresql":
            params: dict[str, Any] = {"limit": limit}
            for i, (cursor, shards) in enumerate(cursors):
                params[f"tx_{i}"], params[f"position_{i}"] = cursor.tx_id, cursor.position
                params[f"shards_{i}"] = list(shards)
            return await self._fetch(pg_after_each(len(cursors)), conn, params)
        found: list[RecordedEvent] = []
        for cursor, shards in cursors:  # SQLite: one after the other, then merged
            found += await self.read_after(cursor, limit=limit, shards=shards, conn=conn)
        found.sort(key=lambda e: (e.tx_id, e.position))
        return found[:limit]

    async def iter_after(
        self,
        cursor: Cursor,
        *,
        batch_size: int = 5000,
        shards: Sequence[int] | None = None,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Batches of events after `cursor` until the (safe) head, in bounded memory."""
        while True:
            batch = await self.read_after(cursor, limit=batch_size, shards=shards)
            if not batch:
                return
            yield batch
            cursor = batch[-1].cursor

    async def _fetch(
        self,
        stmt: Select[Any],
        conn: AsyncConnection | None,
        params: dict[str, Any] | None = None,
    ) -> list[RecordedEvent]:
        crypto = self.crypto
        if conn is not None:
            result = await conn.execute(stmt, params)
            return [decode(r, crypto) for r in result]
        async with self.engine.connect() as own:
            result = await own.execute(stmt, params)
            return [decode(r, crypto) for r in result]

    async def head(self, *, conn: AsyncConnection | None = None) -> LogHead:
        """Event count and highest position."""
        stmt = select(func.count(), func.coalesce(func.max(events.c.position), 0)).select_from(
            events
        )
        if conn is not None:
            row = (await conn.execute(stmt)).one()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(stmt)).one()
        return LogHead(count=int(row[0]), position=int(row[1]))

    # ------------------------------------------------------------------ waiting
    @property
    def slow_poll(self) -> float:
        return SLOW_POLL_SECONDS.get(self.dialect, 1.0)

    async def wait_for_events(self, timeout: float) -> bool:
        """Sleep until new events may have been committed, or at most `timeout` seconds
        (never longer than the slow poll). True when woken by a signal. Always re-read after."""
        return await self.wakeup.wait(min(timeout, self.slow_poll))

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """While open, commits by other processes wake `wait_for_events` (PostgreSQL NOTIFY on
        a connection kept out of the pool). On SQLite waiters rely on the slow poll."""
        if self.dialect != "postgresql":
            yield
            return
        async with pg_listening(asyncpg_dsn(self.engine.url), {NOTIFY_CHANNEL: self.wakeup}):
            yield
