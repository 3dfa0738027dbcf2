"""Operations routes: `/projections`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from registry.api import metrics
from registry.api.errors import json_responses, responses
from registry.api.schemas import HealthOut, ProjectionsOut
from registry.bootstrap import Container

#: a partition whose oldest unprojected event is older than this is stalled
STALL_SECONDS = 60.0
DB_CHECK_TIMEOUT = 3.0


async def partitions(container: Container) -> list[dict[str, Any]]:
    from projections.status import projection_status

    return [s.as_dict() for s in await projection_status(container.engine, container.store)]


def stalled(parts: Sequence[dict[str, Any]], stall_seconds: float = STALL_SECONDS) -> list[str]:
    """Names of the partitions that have events older than `stall_seconds` left to project."""
    return [
        f"{p['name']}/{p['partition']}"
        for p in parts
        if (p.get("lag_events") or 0) > 0 and (p.get("lag_seconds") or 0.0) > stall_seconds
    ]


def ops_router(container: Container, auth: DependsParam) -> APIRouter:
    router = APIRouter(tags=["operations"])
    engine = container.engine

    @router.get(
        "/projections",
        response_model=ProjectionsOut,
        responses=responses(401),
        dependencies=[auth],
        summary="Each projection partition's checkpoint, the log head, and the lag",
    )
    async def projections() -> Any:
        head = await container.store.head()
        return {
            "events": head.count,
            "head_position": head.position,
            "partitions": await partitions(container),
        }

    @router.get("/healthz", response_model=HealthOut, summary="Liveness: the process answers")
    async def healthz() -> Any:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=HealthOut,
        responses=responses(503),
        summary="Readiness: the database answers and no projection is stalled",
    )
    async def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if checks["database"] == "ok":
            try:
                late = stalled(await partitions(container))
                checks["projections"] = f"stalled: {', '.join(late)}" if late else "ok"
            except Exception as exc:
                checks["projections"] = f"unknown: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return {"status": "ok", "checks": checks}
        return JSONResponse(
            {
                "code": "NOT_READY",
                "message": "not ready",
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
        except Exception:  # the projection tables may not exist yet
            parts = []
        body = metrics.render(head.count, head.position, parts)
        return PlainTextResponse(body, media_type=metrics.CONTENT_TYPE)

    return router
