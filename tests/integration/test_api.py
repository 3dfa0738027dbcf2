"""The read API over httpx's ASGI transport, on SQLite and PostgreSQL: every route, auth on
every route, filters and keyset pagination, errors with stable codes, no secret in any body."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserRegistered,
    UserVerified,
    create_engine,
)
from registry.adapter.projector import run_projector
from registry.api import create_app
from registry.api.metrics import record_command
from registry.api.monitoring import stalled
from tests.support.api import (
    OTHER_TOKEN,
    Api,
    assert_no_secrets,
    auth,
    create_tables,
    make_container,
    open_api,
)

PROTECTED = [
    "/users",
    "/users/{id}",
    "/users/{id}?as_of=2030-01-01T00:00:00Z",
    "/users/{id}?min_version=1",
    "/users/{id}/history",
    "/projections",
    "/metrics",
]


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    harness = await open_api(engine)
    try:
        yield harness
    finally:
        await harness.client.aclose()


# ---------------------------------------------------------------------- auth
@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-token"), auth(""), {"Authorization": f"Basic {OTHER_TOKEN}"}],
    ids=["none", "wrong", "empty", "basic"],
)
async def test_every_route_but_health_needs_a_token(
    api: Api, path: str, headers: dict[str, str]
) -> None:
    user_id = await api.register("auth@example.com")
    api.client.headers.pop("Authorization")
    response = await api.client.get(path.replace("{id}", str(user_id)), headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "UNAUTHORIZED"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_each_configured_token_is_accepted_and_health_is_open(api: Api) -> None:
    user_id = await api.register("tokens@example.com")
    for token in ("test-token-0123456789", OTHER_TOKEN):
        response = await api.client.get(f"/users/{user_id}", headers=auth(token))
        assert response.status_code == 200
    api.client.headers.pop("Authorization")
    assert (await api.client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "projections": "ok"}


async def test_no_configured_token_refuses_everyone(engine: AsyncEngine) -> None:
    await create_tables(engine)
    app = create_app(make_container(engine, api_tokens=[]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for headers in ({}, auth(""), auth("anything")):
            assert (await client.get("/users", headers=headers)).status_code == 401
        assert (await client.get("/healthz")).status_code == 200


# ---------------------------------------------------------------------- one user
async def test_get_user_shows_public_fields_and_accounts_without_secrets(api: Api) -> None:
    user_id = await api.register("Alice@Example.com", oauth=True, is_verified=True)
    response = await api.client.get(f"/users/{user_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == str(user_id)
    assert body["email"] == "alice@example.com"  # the canonical form (events.emails)
    assert (body["is_active"], body["is_verified"], body["is_superuser"]) == (True, True, False)
    assert body["version"] == 2
    assert "hashed_password" not in body
    [account] = body["oauth_accounts"]
    assert account["oauth_name"] == "github"
    assert account["expires_at"] == 1_900_000_000
    assert "access_token" not in account
    assert "refresh_token" not in account
    assert_no_secrets(response.text)


async def test_unknown_user_and_bad_id_are_json_errors(api: Api) -> None:
    missing = await api.client.get(f"/users/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "USER_NOT_FOUND"
    bad = await api.client.get("/users/not-a-uuid")
    assert bad.status_code == 422
    assert bad.json()["code"] == "INVALID_REQUEST"
    nowhere = await api.client.get("/nowhere")
    assert (nowhere.status_code, nowhere.json()["code"]) == (404, "NOT_FOUND")


async def test_deleted_user_is_gone(api: Api) -> None:
    user_id = await api.register("gone@example.com", oauth=True)
    await api.append(user_id, [UserDeleted()])
    response = await api.client.get(f"/users/{user_id}")
    assert (response.status_code, response.json()["code"]) == (404, "USER_NOT_FOUND")


async def test_min_version_without_a_projector_times_out_clearly(api: Api) -> None:
    user_id = await api.register("slow@example.com")
    await api.append(user_id, [UserVerified()], project=False)
    response = await api.client.get(f"/users/{user_id}", params={"min_version": 2})
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "PROJECTION_TIMEOUT"
    assert "version 2" in response.json()["message"]
    # a version already shown answers at once
    ok = await api.client.get(f"/users/{user_id}", params={"min_version": 1})
    assert ok.status_code == 200
    assert ok.json()["version"] == 1


async def test_min_version_beyond_the_log_is_refused_at_once(api: Api) -> None:
    user_id = await api.register("ahead@example.com")
    response = await api.client.get(f"/users/{user_id}", params={"min_version": 5})
    assert (response.status_code, response.json()["code"]) == (404, "VERSION_NOT_FOUND")
    assert "stream is at version 1" in response.json()["message"]
    response = await api.client.get(f"/users/{uuid.uuid4()}", params={"min_version": 1})
    assert (response.status_code, response.json()["code"]) == (404, "VERSION_NOT_FOUND")


async def test_min_version_waits_for_the_running_projector(api: Api) -> None:
    c = api.container
    async with run_projector(
        c.engine, c.user_table, c.oauth_table, migrate=False, settings=c.settings
    ):
        user_id = uuid.uuid4()

        recorded = await api.store.append(
            user_id,
            [UserRegistered(email="rw@example.com", hashed_password="x" * 20), UserVerified()],
            expected_version=0,
        )
        response = await api.client.get(
            f"/users/{user_id}", params={"min_version": recorded[-1].stream_version}
        )
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        assert response.json()["is_verified"] is True


# ---------------------------------------------------------------------- listing
async def test_filters_match_email_in_any_case_and_flags(api: Api) -> None:
    alice = await api.register("Alice@Example.COM", is_verified=True)
    bob = await api.register("bob@example.com", is_superuser=True)
    carol = await api.register("carol@example.com")
    await api.append(carol, [UserDeactivated()])

    async def ids(**params: str | int | bool) -> set[str]:
        response = await api.client.get("/users", params=params)
        assert response.status_code == 200, response.text
        assert_no_secrets(response.text)
        return {u["id"] for u in response.json()["items"]}

    assert await ids(email="  alice@EXAMPLE.com ") == {str(alice)}
    assert await ids(email="nobody@example.com") == set()
    assert await ids(is_verified="true") == {str(alice)}
    assert await ids(is_superuser=True) == {str(bob)}
    assert await ids(is_active=False) == {str(carol)}
    assert await ids(is_active=True, is_superuser=False) == {str(alice)}
    assert await ids() == {str(alice), str(bob), str(carol)}


async def test_keyset_pages_cover_every_user_once(api: Api) -> None:
    for i in range(7):
        await api.register(f"user{i}@example.com", oauth=i % 2 == 0)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = (await api.client.get("/users", params=params)).json()
        pages += 1
        seen += [u["id"] for u in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(str(u) for u in api.users)
    linked = [u for u in (await api.client.get("/users", params={"limit": 500})).json()["items"]]
    assert sum(1 for u in linked if u["oauth_accounts"]) == 4


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"cursor": "garbage"}, 400, "INVALID_CURSOR"),
        ({"cursor": "dTE6bm90LWEtdXVpZA"}, 400, "INVALID_CURSOR"),
        ({"limit": 501}, 422, "INVALID_REQUEST"),
        ({"limit": 0}, 422, "INVALID_REQUEST"),
        ({"is_active": "maybe"}, 422, "INVALID_REQUEST"),
    ],
)
async def test_bad_listing_parameters(
    api: Api, params: dict[str, str | int], status: int, code: str
) -> None:
    response = await api.client.get("/users", params=params)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text


# ---------------------------------------------------------------------- operations
async def test_projections_and_metrics(api: Api) -> None:
    await api.register("m1@example.com", oauth=True)
    await api.register("m2@example.com")
    body = (await api.client.get("/projections")).json()
    assert body["events"] == 3
    assert body["head_position"] >= 3
    assert isinstance(body["partitions"], list)

    record_command("register", "rejected", "EMAIL_ALREADY_REGISTERED")
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE registry_events_appended_total counter" in text
    assert "\nregistry_events_appended_total 3\n" in text
    assert "# TYPE registry_projection_lag_events gauge" in text
    assert (
        'registry_commands_total{command="register",outcome="rejected",'
        'code="EMAIL_ALREADY_REGISTERED"}'
    ) in text


async def test_readyz_fails_when_the_database_is_unreachable() -> None:
    engine = create_engine("sqlite+aiosqlite:////nonexistent-dir/x/registry.db")
    try:
        app = create_app(make_container(engine))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert body["code"] == "NOT_READY"
            assert body["checks"]["database"].startswith("unreachable")
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await engine.dispose()


def test_stalled_partitions() -> None:
    parts = [
        {"name": "users", "partition": 0, "lag_events": 0, "lag_seconds": None},
        {"name": "users", "partition": 1, "lag_events": 5, "lag_seconds": 2.0},
        {"name": "users", "partition": 2, "lag_events": 5, "lag_seconds": 600.0},
    ]
    assert stalled(parts) == ["users/2"]


async def test_openapi_documents_auth_and_every_error(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    for path, item in schema["paths"].items():
        op = item["get"]
        documented = set(op["responses"])
        if path in ("/healthz", "/readyz"):
            assert "401" not in documented
            continue
        assert "401" in documented, path
        assert op.get("security"), path
        for status in documented - {"200"}:
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ApiError"), (path, status)
    user_props = schema["components"]["schemas"]["UserOut"]["properties"]
    assert "hashed_password" not in user_props
    account_props = schema["components"]["schemas"]["OAuthAccountOut"]["properties"]
    assert not {"access_token", "refresh_token"} & set(account_props)


async def test_email_change_shows_in_reads(api: Api) -> None:
    user_id = await api.register("old@example.com")
    await api.append(user_id, [UserEmailChanged(email="New@Example.com")])
    body = (await api.client.get(f"/users/{user_id}")).json()
    assert (body["email"], body["version"]) == ("new@example.com", 2)
    found = (await api.client.get("/users", params={"email": "new@example.com"})).json()
    assert [u["id"] for u in found["items"]] == [str(user_id)]
    assert (await api.client.get("/users", params={"email": "old@example.com"})).json()[
        "items"
    ] == []
