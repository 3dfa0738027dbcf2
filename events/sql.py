"""What the PostgreSQL and SQLite stores share: the append (checks, rows, sealing, the
conflict turned into a `ConcurrencyError`), waiting in-process, and (from `events.sql_reads`)
the reads. Each backend supplies its INSERT and its own way to append outside a caller's
transaction."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import checks
from events.catalog import Event
from events.crypto import Crypto, crypto_of
from events.envelope import Metadata, RecordedEvent, shard_of
from events.errors import ConcurrencyError
from events.notify import Wakeup
from events.scope import scope_of
from events.sql_reads import SqlReads

#: {stream_version: (position, tx_id)} of the rows an INSERT wrote
Returned = dict[int, tuple[int, int]]
#: `EventStore(crypto=...)` not given: use what is attached to the engine
ATTACHED: Any = object()


class Conflict(Exception):
    """The stream is not at the expected version (resolved into a `ConcurrencyError`);
    `args[0]`: whether the failed statement aborted the transaction."""


@dataclass(slots=True)
class Pending:
    """An append on its way in: its rows, and the stream's new data key row once sealing made
    one (it must not stay cached if the append fails); what its recorded events are made of."""

    sid: uuid.UUID
    version: int
    rows: list[dict[str, Any]]
    key_row: dict[str, Any] | None = None
    events: Sequence[Event] = ()
    ids: Sequence[uuid.UUID] = ()
    metadata: Metadata | None = None
    recorded_at: datetime | None = None


def engine_wakeup(engine: AsyncEngine) -> Wakeup:
    """One signal per engine: every `EventStore` on it (a writer's and an in-process
    projector's) shares it, so a commit by one wakes the others at once."""
    return scope_of(engine).wakeup


class EventStore(SqlReads):
    """The append-only log of user events in a SQL database (implements `events.port.EventLog`).

    Appends are atomic per call. An append that is given `conn` joins the caller's transaction
    (so that other rows, such as an email reservation, commit with the events); the caller
    then calls `committed()` once its transaction has committed, to wake in-process waiters.
    """

    #: the store class of each dialect (`events.store` names them)
    backends: ClassVar[dict[str, type[EventStore]]] = {}
    #: how often a waiter re-checks the log when no wake-up arrives
    slow_poll: ClassVar[float] = 1.0

    def __new__(cls, engine: AsyncEngine, *, crypto: Crypto | None = ATTACHED) -> EventStore:
        # `EventStore(engine)` is what every caller writes: it picks the engine's backend
        if cls is EventStore:
            backend = EventStore.backends.get(engine.dialect.name)
            if backend is None:
                raise ValueError(f"no event store for the {engine.dialect.name!r} dialect")
            cls = backend
        return super().__new__(cls)

    def __init__(self, engine: AsyncEngine, *, crypto: Crypto | None = ATTACHED) -> None:
        self.engine = engine
        self._crypto = crypto
        self.dialect = engine.dialect.name
        self.wakeup = engine_wakeup(engine)

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
        pending = self.prepare(
            stream_id,
            new_events,
            expected_version=expected_version,
            metadata=metadata,
            recorded_at=recorded_at,
        )
        sid, version = pending.sid, pending.version
        try:
            if conn is not None:
                await self.seal(pending, conn)
                returned = await self._insert(conn, sid, version, pending.rows, pending.key_row)
            else:
                returned = await self._append_alone(pending)
        except Conflict as conflict:
            self._unstored(sid, pending.key_row)
            # looked up once our own connection is back in the pool (or on the caller's
            # connection while its transaction is still usable)
            actual = await self._version_after_failure(sid, conn, aborted=conflict.args[0])
            raise ConcurrencyError(sid, version, actual) from conflict.__cause__
        except BaseException:
            self._unstored(sid, pending.key_row)
            raise
        if conn is None:
            self.committed()
        return self.recorded(pending, returned)

    def prepare(
        self,
        stream_id: uuid.UUID | str,
        new_events: Sequence[Event],
        *,
        expected_version: int,
        metadata: Metadata | dict[str, Any] | None = None,
        recorded_at: datetime | None = None,
    ) -> Pending:
        """The checked rows of an append (not sealed yet: `seal`); `InvalidEventError` for a
        malformed request. `append` is `prepare`, `seal` and an INSERT."""
        sid = checks.stream_uuid(stream_id)
        checked = checks.events_and_payloads(new_events)
        version = checks.expected_version(expected_version, len(checked))
        meta = checks.metadata(metadata)
        when = checks.recorded_at(datetime.now(UTC) if recorded_at is None else recorded_at)
        meta_json = meta.as_json()
        ids = [uuid.uuid4() for _ in checked]
        shard = shard_of(sid)
        rows: list[dict[str, Any]] = [
            {
                "stream_id": sid,
                "stream_version": version + i,
                "shard": shard,
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
        events = [item for item, _ in checked]
        return Pending(sid, version, rows, None, events, ids, meta, when)

    async def seal(self, pending: Pending, conn: AsyncConnection | None) -> None:
        """Encrypt the rows' personal values (`pending.key_row`: the stream's new data key
        row to insert with them, if it had none). A key not cached is read on `conn`."""
        pending.key_row = await self._seal(pending.sid, pending.version, pending.rows, conn)

    def recorded(self, pending: Pending, returned: Returned) -> list[RecordedEvent]:
        """The recorded events of an append whose rows were inserted: `returned` maps each
        stream version to its position and transaction id."""
        version, meta, when = pending.version, pending.metadata, pending.recorded_at
        assert meta is not None
        assert when is not None
        return [
            RecordedEvent(
                position=returned[version + i][0],
                tx_id=returned[version + i][1],
                stream_id=pending.sid,
                stream_version=version + i,
                event_id=pending.ids[i - 1],
                event_type=item.event_type,
                schema_version=item.schema_version,
                event=item,
                metadata=meta,
                recorded_at=when,
            )
            for i, item in enumerate(pending.events, start=1)
        ]

    async def _append_alone(self, pending: Pending) -> Returned:
        """Seal and insert an append made without `conn`, in a transaction of its own (set
        `pending.key_row` as soon as sealing made one). Raises `Conflict` when the stream is
        not at the expected version. Each backend has its own."""
        raise NotImplementedError

    async def _insert(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        expected_version: int,
        rows: list[dict[str, Any]],
        key_row: dict[str, Any] | None = None,
    ) -> Returned:
        """Insert the rows (and the stream's new data key row after them) on `conn`. Raises
        `Conflict(aborted)` when the stream is not at `expected_version`. Each backend has
        its own."""
        raise NotImplementedError

    @property
    def crypto(self) -> Crypto | None:
        """What seals and opens personal data on this engine (`events.crypto.attach`)."""
        return self._crypto if self._crypto is not ATTACHED else crypto_of(self.engine)

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

    # ------------------------------------------------------------------ waiting
    async def wait_for_events(self, timeout: float) -> bool:
        """Sleep until new events may have been committed, or at most `timeout` seconds
        (never longer than the slow poll). True when woken by a signal. Always re-read after."""
        return await self.wakeup.wait(min(timeout, self.slow_poll))

    @contextlib.asynccontextmanager
    async def listening(self, heard: Wakeup | None = None) -> AsyncIterator[bool]:
        """While open, commits by other processes wake `wait_for_events` where the database
        can signal them; elsewhere waiters rely on the slow poll (`events.port.EventLog`)."""
        yield False
