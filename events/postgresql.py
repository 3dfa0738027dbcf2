"""The event store on PostgreSQL.

Two things only PostgreSQL needs. Group commit: concurrent appends to new streams made without
a caller's transaction share one multi-row INSERT (`_grouped`). The read horizon: every event
row carries the id of the transaction that wrote it, and readers go by `(tx_id, position)`
below the oldest transaction still running (`events.pg_statements.PG_READ_HORIZON`), so an
event whose position was taken before a slower transaction committed is delivered after it
commits, never passed over. Commits by other processes wake waiters by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select, insert, literal_column
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.checks import MAX_EVENTS_PER_APPEND
from events.crypto import Crypto
from events.engine import asyncpg_dsn
from events.envelope import Cursor, RecordedEvent
from events.notify import Fanout, Wakeup, pg_listening
from events.pg_statements import (
    PG_INSERT_ROWS,
    PG_INSERT_ROWS_AND_KEYS,
    PG_READ_HORIZON,
    guarded_insert,
    pg_after_each,
    pg_columns,
)
from events.sql import ATTACHED, Conflict, EventStore, Pending, Returned
from events.statements import guarded_params
from events.tables import NOTIFY_CHANNEL, data_keys, events

#: at most this many group INSERTs in flight per store; appends that arrive meanwhile are
#: queued and go together in the next one (an idle store sends at once)
GROUP_COMMIT_INFLIGHT = 2
#: a queued group-commit append: stream, rows, its new data key row (if any), its result
_Queued = tuple[uuid.UUID, list[dict[str, Any]], dict[str, Any] | None, "asyncio.Future[Returned]"]
INSERT_KEY = insert(data_keys)


class PostgresEventStore(EventStore):
    """`EventStore` on PostgreSQL. Concurrent appends to new streams (expected version 0, no
    `conn`) share group commits; each still succeeds or fails on its own."""

    slow_poll = 2.0  # a missed NOTIFY is the only reason to poll

    def __init__(self, engine: AsyncEngine, *, crypto: Crypto | None = ATTACHED) -> None:
        super().__init__(engine, crypto=crypto)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._queue: list[_Queued] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._kicked = False

    async def _append_alone(self, pending: Pending) -> Returned:
        sid, version, rows = pending.sid, pending.version, pending.rows
        if version == 0:
            pending.key_row = await self._seal(sid, version, rows, None)
            return await self._grouped(sid, rows, pending.key_row)
        # one statement is its own transaction: no BEGIN/COMMIT round trips; a key not cached
        # is read on the same connection first
        async with self._autocommit.connect() as own:
            pending.key_row = await self._seal(sid, version, rows, own)
            if pending.key_row is None:
                return await self._insert(own, sid, version, rows)
        # a stream written before encryption: its first key goes in with the events
        async with self.engine.begin() as own:
            return await self._insert(own, sid, version, rows, pending.key_row)

    async def _insert(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        expected_version: int,
        rows: list[dict[str, Any]],
        key_row: dict[str, Any] | None = None,
    ) -> Returned:
        try:
            # the INSERT is the transaction's first write: that is when the transaction id
            # (and so the reading order) is assigned, after the stream was read
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
            raise Conflict(True) from exc
        returned = {r.stream_version: (r.position, r.tx_id) for r in result}
        if len(returned) != len(rows):  # the expected version is not there
            raise Conflict(False)
        if key_row is not None:
            try:
                await conn.execute(INSERT_KEY, key_row)
            except IntegrityError as exc:  # another writer gave this stream a key first
                raise Conflict(True) from exc
        return returned

    # ------------------------------------------------------------------ group commit
    async def _grouped(
        self, sid: uuid.UUID, rows: list[dict[str, Any]], key_row: dict[str, Any] | None
    ) -> Returned:
        """PostgreSQL, own transaction, new stream: the append joins a group commit. Appends
        that arrive while GROUP_COMMIT_INFLIGHT INSERTs are in flight go together in one
        multi-row INSERT (one statement, one transaction, one NOTIFY). A group that trips the
        unique index is retried one append at a time, so each append still succeeds or fails
        on its own; each commits atomically (a group commits as a whole)."""
        future: asyncio.Future[Returned] = asyncio.get_running_loop().create_future()
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
            if len(group) > 1 and await self._insert_group(group):
                return
            # one append, or a group that tripped the unique index: one at a time
            await self._insert_each(group)
        except Exception as exc:  # noqa: BLE001 e.g. the database is unreachable: every append fails, each caller gets the error
            for *_, future in group:
                if not future.done():
                    future.set_exception(exc)
        finally:  # cancelled (the loop is closing): nobody may wait forever
            for *_, future in group:
                future.cancel()

    async def _insert_group(self, group: list[_Queued]) -> bool:
        """The whole group in one multi-row INSERT, its appends resolved; False (nothing
        written, nothing resolved) when it tripped the unique index."""
        keys = [g[2] for g in group if g[2] is not None]
        stmt = PG_INSERT_ROWS_AND_KEYS if keys else PG_INSERT_ROWS
        with contextlib.suppress(IntegrityError):
            async with self._autocommit.connect() as own:
                result = await own.execute(stmt, pg_columns([r for g in group for r in g[1]], keys))
                found: dict[uuid.UUID, Returned] = {}
                for r in result:
                    found.setdefault(r.stream_id, {})[r.stream_version] = (r.position, r.tx_id)
            for sid, _, _, future in group:
                if not future.done():
                    future.set_result(found[sid])
            return True
        return False

    async def _insert_each(self, group: list[_Queued]) -> None:
        """Each append of the group in its own INSERT, each resolved with its own outcome."""
        for sid, rows, key_row, future in group:
            try:
                async with self._autocommit.connect() as own:
                    returned = await self._insert(own, sid, 0, rows, key_row)
            except Exception as exc:  # noqa: BLE001 any failure is this append's outcome, handed to its caller
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(returned)

    # ------------------------------------------------------------------ reading
    def _readable(self, stmt: Select[Any]) -> Select[Any]:
        # only transactions older than every still-running one: a position taken by a
        # slower transaction that has not committed yet can never be passed over
        return stmt.where(events.c.tx_id < literal_column(PG_READ_HORIZON))

    async def read_after_each(
        self,
        cursors: Sequence[tuple[Cursor, Sequence[int]]],
        *,
        limit: int = 1000,
        conn: AsyncConnection | None = None,
    ) -> list[RecordedEvent]:
        """`read_after` for several sets of shards, each after its own cursor, in ONE prepared
        statement: an ordered merge of one index range per set, below one read horizon."""
        params: dict[str, Any] = {"limit": limit}
        for i, (cursor, shards) in enumerate(cursors):
            params[f"tx_{i}"], params[f"position_{i}"] = cursor.tx_id, cursor.position
            params[f"shards_{i}"] = list(shards)
        return await self._fetch(pg_after_each(len(cursors)), conn, params)

    # ------------------------------------------------------------------ waiting
    @contextlib.asynccontextmanager
    async def listening(self, heard: Wakeup | None = None) -> AsyncIterator[bool]:
        """While open, commits by other processes wake `wait_for_events` (NOTIFY, heard on a
        connection kept out of the pool); every commit that appends, this process's too, also
        wakes `heard`."""
        wakeup = self.wakeup if heard is None else Fanout(self.wakeup, heard)
        async with pg_listening(asyncpg_dsn(self.engine.url), {NOTIFY_CHANNEL: wakeup}):
            yield True
