"""`/users` routes: one user (now, at a version, or as of an instant), pages, and history."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from events import RecordedEvent
from events.crypto import ERASED
from projections.queries import ReadModel, UserFilter
from registry.api.errors import ApiProblem, responses
from registry.api.retrying import ReadRoute
from registry.api.schemas import HistoryEntry, HistoryOut, UserOut, UserPageOut
from registry.api.timetravel import user_as_of
from registry.bootstrap import Container
from registry.errors import ProjectionTimeoutError, UserNotFoundError

_CURSOR_PREFIX = "u1:"


class VersionNotFound(UserNotFoundError):
    """`min_version` is beyond the user's stream: nothing will ever be there to wait for."""

    code = "VERSION_NOT_FOUND"


def encode_cursor(after: UUID) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + after.hex).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> UUID:
    """The id a page starts after; `INVALID_CURSOR` (400) for anything we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        return UUID(hex=raw[len(_CURSOR_PREFIX) :])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiProblem(400, "INVALID_CURSOR", "cursor is not one this API issued") from None


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


def users_router(container: Container, read_model: ReadModel) -> APIRouter:
    router = APIRouter(prefix="/users", tags=["users"], route_class=ReadRoute)
    engine = container.engine
    timeout = container.settings.read_your_writes_timeout
    projection: Any = None

    async def wait_for(user_id: UUID, version: int) -> None:
        nonlocal projection
        from projections import UserProjection
        from projections.errors import ProjectionTimeout
        from projections.worker import wait_for_version

        if projection is None:
            projection = UserProjection(container.user_table, container.oauth_table)
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
            int | None,
            Query(ge=1, le=2**31 - 1, description="Wait until the read model shows this version."),
        ] = None,
        as_of: Annotated[
            datetime | None,
            Query(description="ISO 8601 instant: the state folded from the log (naive = UTC)."),
        ] = None,
    ) -> Any:
        if as_of is not None:
            when = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
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
            str | None, Query(max_length=320, description="Exact address, any letter case.")
        ] = None,
        is_active: bool | None = None,
        is_verified: bool | None = None,
        is_superuser: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
        ] = None,
    ) -> Any:
        after = decode_cursor(cursor) if cursor is not None else None
        flt = UserFilter(email, is_active, is_verified, is_superuser)
        async with engine.connect() as conn:
            page = await read_model.list_users(conn, flt, after=after, limit=limit)
        next_cursor = encode_cursor(page.next_after) if page.next_after is not None else None
        return {"items": page.items, "next_cursor": next_cursor}

    @router.get(
        "/{user_id}/history",
        response_model=HistoryOut,
        responses=responses(401, 404, 422),
        summary="The user's events with their metadata, secrets redacted",
        description="An erased user's history stays readable: `erased` is true and every "
        'personal value reads "[erased]".',
    )
    async def history(user_id: UUID) -> HistoryOut:
        stream = await container.store.read_stream(user_id)
        if not stream:
            raise not_found(user_id)
        return HistoryOut(
            user_id=user_id,
            version=stream[-1].stream_version,
            erased=any(r.erased or r.event_type == "UserErased" for r in stream),
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

    return router
