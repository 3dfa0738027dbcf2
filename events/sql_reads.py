"""The reads both SQL stores share: a stream, the log after a cursor, the head. A backend
narrows what a reader may pass (`_readable`) where writers run side by side."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Select, bindparam, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import checks
from events.crypto import Crypto
from events.envelope import Cursor, RecordedEvent
from events.errors import InvalidEventError
from events.port import LogHead
from events.statements import COLUMNS, EVENTS_WITH_KEYS, decode
from events.tables import events

_as_uuid = checks.stream_uuid


#: one stream's events in version order
WHOLE_STREAM = (
    select(*COLUMNS)
    .select_from(EVENTS_WITH_KEYS)
    .where(events.c.stream_id == bindparam("sid", type_=events.c.stream_id.type))
    .order_by(events.c.stream_version)
)


class SqlReads:
    """The reading half of `events.sql.EventStore`."""

    engine: AsyncEngine

    @property
    def crypto(self) -> Crypto | None:
        raise NotImplementedError

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
        if to_version is None and after_version is None and until is None and limit is None:
            # the whole stream (every command reads it): built once, bound per call
            return await self._fetch(WHOLE_STREAM, conn, {"sid": sid})
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
        stmt = self._readable(select(*COLUMNS).select_from(EVENTS_WITH_KEYS).where(after))
        if shards is not None:
            stmt = stmt.where(events.c.shard.in_(list(shards)))
        return stmt.order_by(events.c.tx_id, events.c.position).limit(limit)

    def _readable(self, stmt: Select[Any]) -> Select[Any]:
        """Only the events a reader may pass: every committed one where writers are serial."""
        return stmt

    async def read_after(
        self,
        cursor: Cursor,
        *,
        limit: int = 1000,
        shards: Sequence[int] | None = None,
        conn: AsyncConnection | None = None,
    ) -> list[RecordedEvent]:
        """Up to `limit` events after `cursor`, in an order that never skips an event; each
        stream's events stay in version order. Pass `shards` to read only the streams of those
        shards. On PostgreSQL see `events.postgresql` for how a slower transaction is never
        passed over."""
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
        events are the next ones after its cursor. Here one read per set, merged."""
        found: list[RecordedEvent] = []
        for cursor, shards in cursors:
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
