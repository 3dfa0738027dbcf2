"""JSON errors with stable codes, their HTTP statuses, and their OpenAPI documentation."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import ProjectionTimeoutError, RegistryError, UserNotFoundError

log = logging.getLogger("registry.api")


class ApiError(BaseModel):
    """Every error response: a stable machine-readable `code` and a human `message`."""

    code: str = Field(examples=["USER_NOT_FOUND"])
    message: str
    details: list[dict[str, Any]] | None = None


class ApiProblem(Exception):
    """An error answered as JSON: `status`, stable `code`, `message`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


_REGISTRY_STATUS: dict[type[RegistryError], int] = {
    UserNotFoundError: 404,
    ProjectionTimeoutError: 504,
}

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}

#: what each documented status means on this API
_DESCRIPTIONS = {
    400: "Bad request (`INVALID_CURSOR`).",
    401: "Missing or wrong bearer token (`UNAUTHORIZED`).",
    404: "No such user, or an erased one (`USER_NOT_FOUND`), or `min_version` beyond the "
    "user's stream (`VERSION_NOT_FOUND`).",
    422: "Invalid parameters (`INVALID_REQUEST`).",
    503: "Not ready (`NOT_READY`).",
    504: "The read model did not reach `min_version` in time (`PROJECTION_TIMEOUT`).",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all with the `ApiError` body."""
    return {s: {"model": ApiError, "description": _DESCRIPTIONS[s]} for s in statuses}


def json_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same, for a route whose own media type is not JSON (`/metrics`)."""
    schema = {"$ref": "#/components/schemas/ApiError"}
    return {
        s: {"description": _DESCRIPTIONS[s], "content": {"application/json": {"schema": schema}}}
        for s in statuses
    }


def _json(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ApiError(code=code, message=message, details=details).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


async def _problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return _json(exc.status, exc.code, exc.message, headers=exc.headers)


async def _registry(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    status = next((s for t, s in _REGISTRY_STATUS.items() if isinstance(exc, t)), 400)
    return _json(status, exc.code, exc.message)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").lower()
    return _json(exc.status_code, code, message, headers=dict(exc.headers or {}) or None)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]  # echoing `input` back is left out on purpose: it may be anything the client sent
    return _json(422, "INVALID_REQUEST", "invalid request parameters", details)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in the read API", exc_info=exc)
    return _json(500, "INTERNAL_ERROR", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _problem)
    app.add_exception_handler(RegistryError, _registry)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)
