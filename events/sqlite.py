"""The event store on SQLite: one writer at a time, and a conflict that never fails a statement.

An append is one guarded INSERT (`events.statements.sqlite_guarded_insert`) that writes the
rows only if the stream's head is exactly the expected version: a stale append is found by
the rows it did not return. SQLite serialises writers, so positions are assigned in commit
order, `tx_id` is always 0, and every committed event may be read at once. Waiters in other
processes have no signal and rely on the slow poll.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from events.sql import Conflict, EventStore, Pending, Returned
from events.statements import SQLITE_INSERT_KEY, guarded_params, sqlite_guarded_insert


class SqliteEventStore(EventStore):
    """`EventStore` on SQLite."""

    slow_poll = 0.25  # a writer in another process sends no signal

    async def _append_alone(self, pending: Pending) -> Returned:
        sid, version, rows = pending.sid, pending.version, pending.rows
        pending.key_row = await self._seal(sid, version, rows, None)
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
        params = guarded_params(rows, sid, expected_version)
        result = await conn.execute(sqlite_guarded_insert(len(rows)), params)
        returned = {r.stream_version: (r.position, r.tx_id) for r in result}
        if len(returned) != len(rows):  # the stream is not at the expected version
            raise Conflict(False)
        if key_row is not None and (await conn.execute(SQLITE_INSERT_KEY, key_row)).first() is None:
            raise Conflict(False)  # another writer gave this stream a key first
        return returned
