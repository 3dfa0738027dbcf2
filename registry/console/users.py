"""The user pages: search by email (the one email rule, as `GET /users?email=` applies it) or
id; a user's card (the read model row, as `GET /users/{id}` shapes it) and timeline (the
history, redacted as `GET /users/{id}/history` redacts it), and their state as of any event or
instant (the `as_of` read). An erased user shows as erased, with nothing personal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from events import EventStore
from events.errors import EventStoreError
from projections.failures import describe
from projections.queries import ReadModel, UserFilter
from registry.api.responses import UserOut
from registry.api.timetravel import user_as_of
from registry.api.users import HISTORY_MAX_PAGE
from registry.console.common import Console, Refused, link
from registry.console.headers import PREFIX
from registry.console.sessions import Session
from registry.console.tail import row
from registry.errors import UserNotFoundError

PAGE = f"{PREFIX}/users"
#: matches listed for one search at most
MATCHES = 20


def parse_instant(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Refused(
            400, "Bad request", "Give the instant in ISO 8601, e.g. 2026-01-31T12:00:00Z."
        ) from None
    if value.tzinfo is None:  # naive means UTC, as in the API
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Refused(400, "Bad request", "That instant is out of range.") from None


async def state_as_of(
    store: EventStore, read_model: ReadModel, user_id: UUID, as_of: str
) -> dict[str, Any]:
    """The user's card as of the instant `as_of` (`user`: None before the registration or
    after the deletion), or why there is none at any instant (`gone`: the user was erased)."""
    when = parse_instant(as_of)
    past: dict[str, Any] = {"when": when, "user": None, "gone": None}
    try:
        state = await user_as_of(store, read_model, user_id, when)
    except UserNotFoundError as exc:
        past["gone"] = exc.message
    else:
        past["user"] = UserOut.model_validate(state) if state is not None else None
    return past


def users_router(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    container, read_model = console.container, console.read_model

    @router.get(PAGE)
    async def search(
        request: Request, q: str = "", session: Session = Depends(console.signed_in)
    ) -> Response:
        query = q.strip()[:1024]
        matches: list[UserOut] = []
        if query:
            try:
                return RedirectResponse(f"{PAGE}/{UUID(query)}", status_code=303)
            except ValueError:
                pass
            async with container.engine.connect() as conn:
                page = await read_model.list_users(conn, UserFilter(email=query), limit=MATCHES)
            matches = [UserOut.model_validate(u) for u in page.items]
            if len(matches) == 1:
                return RedirectResponse(f"{PAGE}/{matches[0].id}", status_code=303)
        return console.page(request, "users.html", session=session, q=query, matches=matches)

    @router.get(PAGE + "/{user_id}")
    async def user(
        request: Request,
        user_id: str,
        as_of: str = "",
        session: Session = Depends(console.signed_in),
    ) -> Response:
        try:
            uid = UUID(user_id)
        except ValueError:
            raise Refused(404, "No such user", "That is not a user id.") from None
        try:
            stream = await container.store.read_stream(uid, limit=HISTORY_MAX_PAGE + 1)
        except EventStoreError as exc:
            raise Refused(409, "Cannot read this user's events", describe(exc)) from None
        if not stream:
            raise Refused(404, "No such user", f"No user has the id {uid}.")
        more, stream = len(stream) > HISTORY_MAX_PAGE, stream[:HISTORY_MAX_PAGE]
        erased = any(r.erased or r.event_type == "UserErased" for r in stream)
        card: UserOut | None = None
        if not erased:
            async with container.engine.connect() as conn:
                found = await read_model.get_user(conn, uid)
            card = UserOut.model_validate(found) if found is not None else None
        past = await state_as_of(container.store, read_model, uid, as_of) if as_of else None
        timeline = [
            {**row(r), "as_of": link(f"{PAGE}/{uid}", as_of=r.recorded_at.isoformat())}
            for r in reversed(stream)
        ]
        return console.page(
            request,
            "user.html",
            session=session,
            user_id=uid,
            erased=erased,
            card=card,
            past=past,
            as_of=as_of,
            timeline=timeline,
            more=more,
        )

    return router
