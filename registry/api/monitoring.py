"""Operations routes: `/projections`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from projections.status import projection_skips, projection_status
from registry.api import metrics
from registry.api.errors import json_responses, responses
from registry.api.responses import HealthOut, ProjectionsOut
from registry.api.retrying import ReadRoute
from registry.bootstrap import Container

#: a partition whose oldest unprojected event is older than this is stalled
STALL_SECONDS = 60.0
DB_CHECK_TIMEOUT = 3.0


async def partitions(container: Container) -> list[dict[str, Any]]:
    return [s.as_dict() for s in await projection_status(container.engine, container.store)]


async def skipped(container: Container) -> list[dict[str, Any]]:
    return [s.as_dict() for s in await projection_skips(container.engine)]


def failed(parts: Sequence[dict[str, Any]]) -> list[str]:
    """The partitions stopped on an event they cannot apply, described for `/readyz`."""
    return [
        f"{p['name']}/{p['partition']} at position {p['failure']['position']} "
        f"({p['failure']['reason'].split(':', 1)[0]})"
        for p in parts
        if p.get("failure")
    ]


def stalled(parts: Sequence[dict[str, Any]], stall_seconds: float = STALL_SECONDS) -> list[str]:
    """Names of the partitions that have events older than `stall_seconds` left to project."""
    return [
        f"{p['name']}/{p['partition']}"
        for p in parts
        if (p.get("lag_events") or 0) > 0 and (p.get("lag_seconds") or 0.0) > stall_seconds
    ]


def ops_router(container: Container, auth: DependsParam) -> APIRouter:
    router = APIRouter(tags=["operations"], route_class=ReadRoute)
    engine = container.engine

    @router.get(
        "/projections",
        response_model=ProjectionsOut,
        responses=responses(401),
        dependencies=[auth],
        summary="Each projection partition's checkpoint, the log head, the lag, failures "
        "and skipped events",
    )
    async def projections() -> dict[str, object]:
        head = await container.store.head()
        return {
            "events": head.count,
            "head_position": head.position,
            "partitions": await partitions(container),
            "skipped": await skipped(container),
        }

    @router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=HealthOut,
        responses=responses(503),
        summary="Readiness: the database answers and no projection is stalled or failed",
        description="503 `NOT_READY` when the database does not answer, a projection "
        "partition is stalled (events older than 60 s left to project), or a partition is "
        "failed (stopped on an event it cannot apply, until `registry projections retry` or "
        "`skip`): `checks` says which.",
    )
    async def readyz() -> dict[str, object] | JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 a health check reports any failure, never raises
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if checks["database"] == "ok":
            try:
                parts = await partitions(container)
                stopped, late = failed(parts), stalled(parts)
                problems = [f"failed: {', '.join(stopped)}"] if stopped else []
                problems += [f"stalled: {', '.join(late)}"] if late else []
                checks["projections"] = "; ".join(problems) or "ok"
            except Exception as exc:  # noqa: BLE001 reported, like the database check
                checks["projections"] = f"unknown: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return {"status": "ok", "checks": checks}
        bad = "; ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
        return JSONResponse(
            {
                "code": "NOT_READY",
                "message": f"not ready: {bad}",
                "status": "unavailable",
                "checks": checks,
            },
            status_code=503,
        )

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text format.",
            },
            **json_responses(401),
        },
        dependencies=[auth],
        summary="Prometheus metrics: events appended, projection lag, command outcomes",
    )
    async def metrics_text() -> PlainTextResponse:
        head = await container.store.head()
        try:
            parts = await partitions(container)
        except SQLAlchemyError:  # the projection tables may not exist yet
            parts = []
        try:
            skips = await skipped(container)
        except SQLAlchemyError:
            skips = []
        body = metrics.render(head.count, head.position, parts, skips)
        return PlainTextResponse(body, media_type=metrics.CONTENT_TYPE)

    return router
