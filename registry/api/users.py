"""`/users` routes: one user (now, at a version, or as of an instant), pages, and history."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from events import EventStore, RecordedEvent
from events.crypto import ERASED
from projections.errors import ProjectionTimeout
from projections.queries import MAX_PAGE, ReadModel, UserFilter
from projections.worker import wait_for_version
from registry.api.errors import ApiProblem, responses
from registry.api.params import Instant, PlainText, StrictBool, StrictInt
from registry.api.responses import HistoryEntry, HistoryOut, UserOut, UserPageOut
from registry.api.retrying import ReadRoute
from registry.api.timetravel import user_as_of
from registry.bootstrap import Container
from registry.errors import ProjectionTimeoutError, UserNotFoundError

_CURSOR_PREFIX = "u1:"
_HISTORY_PREFIX = "h1:"
#: events per history page: by default, and at most
HISTORY_PAGE = 100
HISTORY_MAX_PAGE = 1000


class VersionNotFound(UserNotFoundError):
    """`min_version` is beyond the user's stream: nothing will ever be there to wait for."""

    code = "VERSION_NOT_FOUND"


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, prefix: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiProblem(400, "INVALID_CURSOR", "cursor is not one this API issued") from None
    if not raw.startswith(prefix):
        raise ApiProblem(400, "INVALID_CURSOR", "cursor is not one this API issued")
    return raw[len(prefix) :]


def encode_cursor(after: UUID) -> str:
    return _encode(_CURSOR_PREFIX + after.hex)


def decode_cursor(cursor: str) -> UUID:
    """The id a page starts after; `INVALID_CURSOR` (400) for anything we did not issue."""
    try:
        return UUID(hex=_decode(cursor, _CURSOR_PREFIX))
    except ValueError:
        raise ApiProblem(400, "INVALID_CURSOR", "cursor is not one this API issued") from None


def encode_history_cursor(user_id: UUID, after_version: int) -> str:
    return _encode(f"{_HISTORY_PREFIX}{user_id.hex}:{after_version}")


def decode_history_cursor(cursor: str, user_id: UUID) -> int:
    """The stream version a history page starts after; `INVALID_CURSOR` (400) for anything
    not issued for this user's history."""
    user_hex, _, version = _decode(cursor, _HISTORY_PREFIX).partition(":")
    if user_hex != user_id.hex or not version.isdecimal() or len(version) > 10:
        raise ApiProblem(400, "INVALID_CURSOR", "cursor is not one this API issued for this user")
    return int(version)


def not_found(user_id: UUID, when: datetime | None = None) -> UserNotFoundError:
    at = f" at {when.isoformat()}" if when is not None else ""
    return UserNotFoundError(f"user {user_id} does not exist{at}")


def history_data(recorded: RecordedEvent) -> dict[str, Any]:
    """An event's payload for the history: secrets "[redacted]"; of an erased user, every
    personal value "[erased]" (secrets included: nothing is left to redact)."""
    data = recorded.event.redacted()
    if not recorded.erased:
        return data
    for name, value in recorded.event.model_dump(mode="json").items():
        if value == ERASED:
            data[name] = ERASED
        elif isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {k: ERASED if v == ERASED else data[name][k] for k, v in value.items()}
    return data


async def history_page(
    store: EventStore, user_id: UUID, after: int | None, limit: int
) -> HistoryOut:
    """Up to `limit` of the user's events after stream version `after` (from the start when
    None), with the stream's current version; `UserNotFoundError` when it has none."""
    stream = await store.read_stream(user_id, after_version=after, limit=limit + 1)
    more = len(stream) > limit
    stream = stream[:limit]
    if more or not stream:  # the page does not end the stream: ask where it ends
        head = await store.stream_version(user_id)
    else:
        head = stream[-1].stream_version
    if head == 0:
        raise not_found(user_id)
    # an erased user's events all read as erased; a cursor at the end: ask the last one
    shown = stream or await store.read_stream(user_id, after_version=head - 1)
    erased = any(r.erased or r.event_type == "UserErased" for r in shown)
    return HistoryOut(
        user_id=user_id,
        version=head,
        erased=erased,
        next_cursor=(encode_history_cursor(user_id, stream[-1].stream_version) if more else None),
        events=[
            HistoryEntry(
                position=r.position,
                stream_version=r.stream_version,
                event_id=r.event_id,
                event_type=r.event_type,
                schema_version=r.schema_version,
                recorded_at=r.recorded_at,
                data=history_data(r),
                metadata=r.metadata.as_json(),
            )
            for r in stream
        ],
    )


def users_router(container: Container, read_model: ReadModel) -> APIRouter:
    router = APIRouter(prefix="/users", tags=["users"], route_class=ReadRoute)
    engine = container.engine
    timeout = container.settings.read_your_writes_timeout
    projection = container.projection()

    async def wait_for(user_id: UUID, version: int) -> None:
        try:
            await wait_for_version(engine, projection, user_id, version, timeout)
        except ProjectionTimeout as exc:
            raise ProjectionTimeoutError(
                f"the read model did not reach version {version} of user {user_id} "
                f"within {timeout:g}s: {exc}"
            ) from None

    @router.get(
        "/{user_id}",
        response_model=UserOut,
        responses=responses(401, 404, 422, 504),
        summary="One user: current, at least `min_version`, or as of an instant",
    )
    async def get_user(
        user_id: UUID,
        min_version: Annotated[
            StrictInt | None,
            Query(ge=1, le=2**31 - 1, description="Wait until the read model shows this version."),
        ] = None,
        as_of: Annotated[
            Instant | None,
            Query(description="ISO 8601 instant: the state folded from the log (naive = UTC)."),
        ] = None,
    ) -> dict[str, Any]:
        if as_of is not None:
            when = as_of  # aware and in UTC (`Instant`)
            user = await user_as_of(container.store, read_model, user_id, when)
            if user is None:
                raise not_found(user_id, when)
            return user
        async with engine.connect() as conn:
            user = await read_model.get_user(conn, user_id)
        if min_version is not None and (user is None or user["version"] < min_version):
            written = await container.store.stream_version(user_id)
            if written < min_version:  # no write will bring it: the client's mistake
                raise VersionNotFound(
                    f"user {user_id} has no version {min_version} in the log "
                    f"(its stream is at version {written})"
                )
            await wait_for(user_id, min_version)
            async with engine.connect() as conn:
                user = await read_model.get_user(conn, user_id)
        if user is None:
            raise not_found(user_id)
        return user

    @router.get(
        "",
        response_model=UserPageOut,
        responses=responses(400, 401, 422),
        summary="Users, filtered, in pages (keyset pagination by id)",
    )
    async def list_users(
        email: Annotated[
            PlainText | None,
            Query(
                max_length=1024,
                description="The address, as typed: it is compared in its canonical form "
                "(trimmed, NFC, lower-cased), the form users are stored with.",
            ),
        ] = None,
        is_active: Annotated[StrictBool | None, Query(description="`true` or `false`.")] = None,
        is_verified: Annotated[StrictBool | None, Query(description="`true` or `false`.")] = None,
        is_superuser: Annotated[StrictBool | None, Query(description="`true` or `false`.")] = None,
        limit: Annotated[StrictInt, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
        ] = None,
    ) -> dict[str, object]:
        after = decode_cursor(cursor) if cursor is not None else None
        flt = UserFilter(email, is_active, is_verified, is_superuser)
        async with engine.connect() as conn:
            page = await read_model.list_users(conn, flt, after=after, limit=limit)
        next_cursor = encode_cursor(page.next_after) if page.next_after is not None else None
        return {"items": page.items, "next_cursor": next_cursor}

    @router.get(
        "/{user_id}/history",
        response_model=HistoryOut,
        responses=responses(400, 401, 404, 422),
        summary="The user's events with their metadata, secrets redacted, in pages",
        description="Events in stream order, `limit` per page (keyset pagination by stream "
        "version: pass `next_cursor` as `cursor` for the next page). `version` is the "
        "stream's current version. An erased user's history stays readable: `erased` is "
        'true and every personal value reads "[erased]".',
    )
    async def history(
        user_id: UUID,
        limit: Annotated[StrictInt, Query(ge=1, le=HISTORY_MAX_PAGE)] = HISTORY_PAGE,
        cursor: Annotated[
            str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
        ] = None,
    ) -> HistoryOut:
        after = decode_history_cursor(cursor, user_id) if cursor is not None else None
        return await history_page(container.store, user_id, after, limit)

    return router
