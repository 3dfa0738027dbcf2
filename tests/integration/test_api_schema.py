"""schemathesis against the read API's own OpenAPI schema, authorised, on SQLite and
PostgreSQL: no 5xx, every answer as documented, and no body ever holds a password hash or an
OAuth token (the seeded users have both in the log and in the read model)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from events import UserDeleted, create_engine, normalise_url
from tests.support.api import assert_no_secrets, auth, open_api


def _engine(url: str) -> AsyncEngine:
    # NullPool: the app runs on schemathesis' event loop thread, the seeding on another loop
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    return create_async_engine(normalise_url(url), poolclass=NullPool)


@pytest.fixture
def seeded(database_url: str) -> Iterator[tuple[FastAPI, list[uuid.UUID]]]:
    engine = _engine(database_url)

    async def seed() -> tuple[FastAPI, list[uuid.UUID]]:
        api = await open_api(engine, read_your_writes_timeout=0.2)
        ids = [
            await api.register("Alice@Example.com", oauth=True, is_verified=True),
            await api.register("bob@example.com", is_superuser=True),
            await api.register("carol@example.com", oauth=True),
        ]
        gone = await api.register("gone@example.com", oauth=True)
        await api.append(gone, [UserDeleted()])
        await api.client.aclose()
        return api.app, [*ids, gone]

    app, ids = asyncio.run(seed())
    yield app, ids
    asyncio.run(engine.dispose())


@pytest.fixture
def client(seeded: tuple[FastAPI, list[uuid.UUID]]) -> Iterator[asgi.ASGIClient]:
    # Starlette's ASGI signature types scope/receive/send more precisely than schemathesis'
    with asgi.get_client(seeded[0]) as session:  # type: ignore[arg-type]
        yield session


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def exercise(
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    client: asgi.ASGIClient,
    ids: list[uuid.UUID],
    turn: Iterator[int],
) -> None:
    """Up to 15 generated requests to one operation: never a 5xx, never a secret, and
    (for valid requests) status, content type and body as the schema documents."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Case[Any]) -> None:
        if case.path_parameters and "user_id" in case.path_parameters:
            # every other case asks for a seeded user (random ids are only ever 404)
            n = next(turn)
            if n % 2 == 0:
                case.path_parameters["user_id"] = str(ids[(n // 2) % len(ids)])
        response = case.call(session=client, headers=auth())
        assert_no_secrets(response.text)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, checks=CHECKS, headers=auth())

    if mode is GenerationMode.NEGATIVE:
        # routes without parameters have no invalid request to make
        with contextlib.suppress(Unsatisfiable):
            check()
    else:
        check()


def test_read_api_conforms_and_leaks_nothing(
    seeded: tuple[FastAPI, list[uuid.UUID]], client: asgi.ASGIClient
) -> None:
    # schemathesis' pytest plugin (lazy schemas) does not run under pytest 9: drive each
    # operation's hypothesis strategy directly, valid and invalid requests
    app, ids = seeded
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    turn = itertools.count()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) == 7  # users, user, history, projections, health, ready, metrics
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, client, ids, turn)
