"""Read-API input on SQLite and PostgreSQL: parameters that used to reach the database or the
datetime arithmetic and answer 500 are 422 with a reason; booleans and integers are strict;
`/users/{id}/history` comes in keyset pages like `/users`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events import Event, UserRegistered, UserUnverified, UserVerified
from registry.api.users import HISTORY_MAX_PAGE, HISTORY_PAGE, encode_history_cursor
from tests.support.api import Api, assert_no_secrets, open_api

HASH = "$argon2id$v=19$m=65536,t=3,p=4$SECRETHASHsecrethash"


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    harness = await open_api(engine)
    try:
        yield harness
    finally:
        await harness.client.aclose()


def refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "INVALID_REQUEST"
    text = " ".join(d["msg"] for d in body["details"])
    for word in words:
        assert word in text, text


# ---------------------------------------------------------------------- no 5xx
@pytest.mark.parametrize(
    "as_of", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"]
)
async def test_as_of_that_leaves_the_calendar_in_utc_is_422(api: Api, as_of: str) -> None:
    user_id = await api.register("when@example.com")
    response = await api.client.get(f"/users/{user_id}", params={"as_of": as_of})
    refused(response, "UTC")


async def test_as_of_at_the_calendar_edges_in_utc_still_works(api: Api) -> None:
    user_id = await api.register("edges@example.com")
    early = await api.client.get(f"/users/{user_id}", params={"as_of": "0001-01-01T00:00:00Z"})
    assert (early.status_code, early.json()["code"]) == (404, "USER_NOT_FOUND")
    late = await api.client.get(f"/users/{user_id}", params={"as_of": "9999-12-31T23:59:59Z"})
    assert (late.status_code, late.json()["email"]) == (200, "edges@example.com")


@pytest.mark.parametrize("email", ["a\x00b", "a\x00b@example.com", "tab\t@example.com", "\x7f"])
async def test_email_filter_with_control_characters_is_422(api: Api, email: str) -> None:
    await api.register("a@example.com")
    refused(await api.client.get("/users", params={"email": email}), "control characters")


async def test_nul_in_other_text_parameters_is_a_client_error(api: Api) -> None:
    user_id = await api.register("cursor@example.com")
    response = await api.client.get("/users", params={"cursor": "a\x00b"})
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_CURSOR")
    response = await api.client.get(f"/users/{user_id}/history", params={"cursor": "\x00"})
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_CURSOR")
    response = await api.client.get(f"/users/{user_id}", params={"as_of": "2030\x00"})
    refused(response)


# ---------------------------------------------------------------------- strict types
@pytest.mark.parametrize("value", ["yes", "1", "on", "True", "t", " true", "0", "no"])
async def test_boolean_filters_take_only_true_and_false(api: Api, value: str) -> None:
    await api.register("flags@example.com", is_verified=True)
    for name in ("is_active", "is_verified", "is_superuser"):
        refused(await api.client.get("/users", params={name: value}), "true or false")


async def test_boolean_filters_still_filter(api: Api) -> None:
    verified = await api.register("v@example.com", is_verified=True)
    await api.register("u@example.com")
    response = await api.client.get("/users", params={"is_verified": "true"})
    assert [u["id"] for u in response.json()["items"]] == [str(verified)]
    response = await api.client.get("/users", params={"is_verified": "false"})
    assert len(response.json()["items"]) == 1


@pytest.mark.parametrize(
    "value", ["1.0", " 5", "5 ", "1_0", "+5", "1e1", "\u0665"]
)  # the last: an Arabic-Indic five
async def test_integers_take_only_decimal_digits(api: Api, value: str) -> None:
    user_id = await api.register("ints@example.com")
    refused(await api.client.get("/users", params={"limit": value}), "decimal digits")
    refused(
        await api.client.get(f"/users/{user_id}", params={"min_version": value}),
        "decimal digits",
    )
    refused(
        await api.client.get(f"/users/{user_id}/history", params={"limit": value}),
        "decimal digits",
    )


# ---------------------------------------------------------------------- history pages
async def write_long_life(api: Api, events: int) -> uuid.UUID:
    user_id = uuid.uuid4()
    life: list[Event] = [UserRegistered(email="long@example.com", hashed_password=HASH)]
    life += [UserVerified() if i % 2 else UserUnverified() for i in range(1, events)]
    await api.append(user_id, life, project=False)
    return user_id


async def test_history_comes_in_keyset_pages(api: Api) -> None:
    total = 2 * HISTORY_PAGE + 51
    user_id = await write_long_life(api, total)
    seen: list[int] = []
    sizes: list[int] = []
    cursor = None
    while True:
        params: dict[str, str] = {"cursor": cursor} if cursor else {}
        response = await api.client.get(f"/users/{user_id}/history", params=params)
        assert response.status_code == 200, response.text
        assert_no_secrets(response.text)
        body = response.json()
        assert body["version"] == total
        assert body["user_id"] == str(user_id)
        assert body["erased"] is False
        sizes.append(len(body["events"]))
        seen += [e["stream_version"] for e in body["events"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sizes == [HISTORY_PAGE, HISTORY_PAGE, 51]
    assert seen == list(range(1, total + 1))

    small = (await api.client.get(f"/users/{user_id}/history", params={"limit": 7})).json()
    assert [e["stream_version"] for e in small["events"]] == list(range(1, 8))
    following = await api.client.get(
        f"/users/{user_id}/history", params={"limit": 7, "cursor": small["next_cursor"]}
    )
    assert following.json()["events"][0]["stream_version"] == 8

    whole = await api.client.get(f"/users/{user_id}/history", params={"limit": HISTORY_MAX_PAGE})
    assert len(whole.json()["events"]) == total
    assert whole.json()["next_cursor"] is None


async def test_history_page_limits_and_cursors_are_checked(api: Api) -> None:
    user_id = await write_long_life(api, 5)
    other = await write_long_life(api, 5)
    path = f"/users/{user_id}/history"
    for limit in (0, HISTORY_MAX_PAGE + 1):
        refused(await api.client.get(path, params={"limit": limit}))
    for cursor in ("nope", encode_history_cursor(other, 2), "dTE6MDAwMDAwMDA"):
        response = await api.client.get(path, params={"cursor": cursor})
        assert (response.status_code, response.json()["code"]) == (400, "INVALID_CURSOR")
    # a cursor at the end: an empty last page that still says where the stream is
    end = await api.client.get(path, params={"cursor": encode_history_cursor(user_id, 5)})
    assert end.status_code == 200, end.text
    assert (end.json()["events"], end.json()["version"], end.json()["next_cursor"]) == (
        [],
        5,
        None,
    )
    gone = await api.client.get(f"/users/{uuid.uuid4()}/history")
    assert (gone.status_code, gone.json()["code"]) == (404, "USER_NOT_FOUND")
