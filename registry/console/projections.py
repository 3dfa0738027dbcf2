"""The projections page: each partition's checkpoint, head, lag and lease, a failed
partition's event and reason, and the operator's retry and (confirmed, recorded) skip."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from projections.errors import ProjectionError
from projections.status import projection_skips, projection_status
from registry.api.responses import ProjectionsOut
from registry.console.common import Console, Refused, link
from registry.console.headers import PREFIX
from registry.console.sessions import Session
from registry.service.operations import pending_event, retry_failed, skip_event

PAGE = f"{PREFIX}/projections"


async def overview(console: Console) -> ProjectionsOut:
    """What `GET /projections` answers, through the same response model."""
    container = console.container
    head = await container.store.head()
    return ProjectionsOut.model_validate(
        {
            "events": head.count,
            "head_position": head.position,
            "partitions": [
                s.as_dict() for s in await projection_status(container.engine, container.store)
            ],
            "skipped": [s.as_dict() for s in await projection_skips(container.engine)],
        }
    )


def _partition_of(form: Mapping[str, object]) -> tuple[str, int]:
    name, partition = form.get("projection"), form.get("partition")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise Refused(400, "Bad request", "Which projection? The form named none.")
    if not isinstance(partition, str) or not partition.isdecimal() or len(partition) > 6:
        raise Refused(400, "Bad request", "Which partition? The form named none.")
    return name, int(partition)


def _skip_of(form: Mapping[str, object]) -> tuple[str, int, str, str, str]:
    """The skip form's projection, partition, position (as written), who and why; refused
    unless all are there and the skip is confirmed."""
    name, partition = _partition_of(form)
    position, who, why = form.get("position"), form.get("who"), form.get("why")
    if not isinstance(position, str) or not position.isdecimal() or len(position) > 19:
        raise Refused(400, "Bad request", "Which event? The form named no position.")
    if form.get("confirm") != "yes":
        raise Refused(400, "Not confirmed", "Tick the confirmation to skip; nothing changed.")
    if not isinstance(who, str) or not who.strip() or not isinstance(why, str) or not why.strip():
        raise Refused(400, "Who and why", "A skip records who skipped and why: say both.")
    return name, partition, position, who, why


def projections_router(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    settings = console.container.settings

    async def table_context() -> dict[str, Any]:
        found = await overview(console)
        lag = sum(p.lag_events or 0 for p in found.partitions)
        return {"overview": found, "lag": lag, "sampled_at": time.time()}

    @router.get(PAGE)
    async def page(
        request: Request,
        retried: str | None = None,
        skipped: str | None = None,
        session: Session = Depends(console.signed_in),
    ) -> Response:
        notice = None
        if retried is not None:
            notice = f"Retry requested for {retried}: its projector tries the event again."
        elif skipped is not None:
            notice = f"Skipped {skipped}; the skip is recorded below."
        context = await table_context()
        return console.page(request, "projections.html", session=session, notice=notice, **context)

    @router.get(f"{PAGE}/table")
    async def table(request: Request, session: Session = Depends(console.signed_in)) -> Response:
        """The table alone, for the page's periodic refresh."""
        context = await table_context()
        return console.page(request, "_projections_table.html", session=session, **context)

    @router.post(f"{PAGE}/retry")
    async def retry(request: Request, _: Session = Depends(console.checked)) -> Response:
        name, partition = _partition_of(await request.form())
        cleared = await retry_failed(settings, name, partition)
        if not cleared:
            raise Refused(409, "Nothing to retry", f"{name}/{partition} has no failure.")
        return RedirectResponse(link(PAGE, retried=f"{name}/{partition}"), status_code=303)

    @router.get(f"{PAGE}/skip")
    async def confirm_skip(
        request: Request,
        projection: str = "",
        partition: str = "",
        session: Session = Depends(console.signed_in),
    ) -> Response:
        name, number = _partition_of({"projection": projection, "partition": partition})
        try:
            pending = await pending_event(settings, name, number)
        except ProjectionError as exc:
            raise Refused(409, "Nothing to skip", str(exc)) from None
        return console.page(request, "skip.html", session=session, pending=pending)

    @router.post(f"{PAGE}/skip")
    async def skip(request: Request, session: Session = Depends(console.checked)) -> Response:
        name, partition, position, who, why = _skip_of(await request.form())
        try:
            await skip_event(
                settings,
                name,
                partition,
                int(position),
                by=f"{who.strip()[:100]} (console, token {session.who})",
                note=why.strip(),
            )
        except ProjectionError as exc:
            raise Refused(409, "Not skipped", str(exc)) from None
        done = f"position {position} of {name}/{partition}"
        return RedirectResponse(link(PAGE, skipped=done), status_code=303)

    return router
