"""The live events page: the log's tail, newest first, polled by the page as it grows;
payloads redacted by the history route's own function; filtered by event type."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EVENT_TYPES, Cursor, EventStore, RecordedEvent
from events.envelope import SHARDS
from events.errors import EventStoreError
from events.tables import events
from projections.failures import EventRef, describe, next_event
from registry.api.users import history_data
from registry.console.common import Console, Refused
from registry.console.headers import PREFIX
from registry.console.sessions import Session

PAGE = f"{PREFIX}/events"
#: events shown when the page opens
FIRST = 50
#: events read per poll at most (the cursor moves on past them either way)
BATCH = 500
CURSOR_HEADER = "X-Console-Cursor"
#: events read one at a time per poll after a batch that could not be read
UNREADABLE_BATCH = 50
#: how long a poll with nothing new waits for the next commit before answering empty
LONG_POLL = 10.0
#: re-read at least this often while waiting: a commit signalled between the last read and the
#: wait is then seen this late at worst
RECHECK = 0.5


def parse_cursor(raw: str) -> Cursor:
    tx, _, position = raw.partition(".")
    if not (tx.isdecimal() and position.isdecimal() and len(tx) < 20 and len(position) < 20):
        raise Refused(400, "Bad request", "That cursor is not one this page issued.")
    return Cursor(int(tx), int(position))


def format_cursor(cursor: Cursor) -> str:
    return f"{cursor.tx_id}.{cursor.position}"


def row(recorded: RecordedEvent) -> dict[str, Any]:
    return {
        "cursor": recorded.cursor,
        "position": recorded.position,
        "event_type": recorded.event_type,
        "stream_id": str(recorded.stream_id),
        "stream_version": recorded.stream_version,
        "recorded_at": recorded.recorded_at,
        "data": json.dumps(history_data(recorded), default=str, ensure_ascii=False),
        "metadata": json.dumps(recorded.metadata.as_json(), default=str, ensure_ascii=False),
        "unreadable": None,
    }


def unreadable(ref: EventRef, reason: str) -> dict[str, Any]:
    return {
        "cursor": ref.cursor,
        "position": ref.position,
        "event_type": ref.event_type,
        "stream_id": str(ref.stream_id),
        "stream_version": ref.stream_version,
        "recorded_at": None,
        "data": None,
        "metadata": None,
        "unreadable": reason,
    }


async def one_by_one(
    store: EventStore, engine: AsyncEngine, cursor: Cursor
) -> list[dict[str, Any]]:
    """The next events after `cursor`, read singly: one that cannot be read (a data key this
    deployment cannot open, a corrupt payload) is shown with the reason instead of its data,
    and the tail goes on past it."""
    found: list[dict[str, Any]] = []
    for _ in range(UNREADABLE_BATCH):
        try:
            next_one = await store.read_after(cursor, limit=1)
        except EventStoreError as exc:
            async with engine.connect() as conn:
                ref = await next_event(conn, cursor, list(range(SHARDS)))
            if ref is None:
                break
            found.append(unreadable(ref, describe(exc)))
            cursor = ref.cursor
            continue
        if not next_one:
            break
        found.append(row(next_one[0]))
        cursor = next_one[0].cursor
    return found


def tail_router(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    store = console.container.store
    engine = console.container.engine

    async def start(event_type: str | None) -> Cursor:
        """The cursor just before the last FIRST events (of `event_type`)."""
        stmt = (
            select(events.c.tx_id, events.c.position)
            .order_by(events.c.tx_id.desc(), events.c.position.desc())
            .offset(FIRST)
            .limit(1)
        )
        if event_type is not None:
            stmt = stmt.where(events.c.event_type == event_type)
        async with engine.connect() as conn:
            found = (await conn.execute(stmt)).first()
        return Cursor(found.tx_id, found.position) if found else Cursor(0, 0)

    async def read(after: str | None, event_type: str | None) -> tuple[list[Any], Cursor]:
        if event_type is not None and event_type not in EVENT_TYPES:
            raise Refused(400, "Bad request", "No such event type.")
        cursor = parse_cursor(after) if after else await start(event_type)
        try:
            batch: list[dict[str, Any]] = [
                row(r) for r in await store.read_after(cursor, limit=BATCH)
            ]
        except EventStoreError:
            batch = await one_by_one(store, engine, cursor)
        if batch:
            cursor = batch[-1]["cursor"]
        shown = [r for r in batch if event_type is None or r["event_type"] == event_type]
        return list(reversed(shown)), cursor

    @router.get(PAGE)
    async def page(
        request: Request, type: str | None = None, session: Session = Depends(console.signed_in)
    ) -> Response:
        chosen = type or None
        rows, cursor = await read(None, chosen)
        return console.page(
            request,
            "events.html",
            session=session,
            rows=rows,
            cursor=format_cursor(cursor),
            types=sorted(EVENT_TYPES),
            chosen=chosen,
        )

    @router.get(f"{PAGE}/rows")
    async def rows(
        request: Request,
        after: str = "",
        type: str | None = None,
        session: Session = Depends(console.signed_in),
    ) -> Response:
        """The events after `after` as table rows, newest first; the new cursor in a header.
        With nothing new it waits for the next commit (up to LONG_POLL), so a new event shows
        as soon as it is committed rather than at the page's next poll."""
        found, cursor = await read(after or None, type or None)
        deadline = time.monotonic() + LONG_POLL
        while not found and time.monotonic() < deadline and not console.container.stopping:
            await store.wait_for_events(min(RECHECK, deadline - time.monotonic()))
            found, cursor = await read(format_cursor(cursor), type or None)
        response = console.page(request, "_event_rows.html", session=session, rows=found)
        response.headers[CURSOR_HEADER] = format_cursor(cursor)
        return response

    return router
