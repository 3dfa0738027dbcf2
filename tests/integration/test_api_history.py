"""`GET /users/{id}/history` and `GET /users/{id}?as_of=…` over a known sequence of changes
written under freezegun, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.ext.asyncio import AsyncEngine

from events import (
    Event,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserVerified,
)
from tests.support.api import ACCESS, HASH, Api, assert_no_secrets, open_api

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
STEP = timedelta(hours=1)
ACCOUNT = uuid.UUID(int=7)


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    harness = await open_api(engine)
    try:
        yield harness
    finally:
        await harness.client.aclose()


async def write_life(api: Api) -> uuid.UUID:
    """T0 registered, T0+1h email changed, +2h verified and linked, +3h password and token
    changed, +4h deactivated and profile changed, +5h deleted."""
    user_id = uuid.uuid4()
    steps: list[list[Event]] = [
        [UserRegistered(email="first@example.com", hashed_password=HASH)],
        [UserEmailChanged(email="second@example.com")],
        [
            UserVerified(),
            OAuthAccountLinked(
                oauth_account_id=ACCOUNT,
                oauth_name="google",
                access_token=ACCESS,
                account_id="g-1",
                account_email="second@example.com",
            ),
        ],
        [
            UserPasswordChanged(hashed_password=HASH + "2"),
            OAuthAccountUpdated(oauth_account_id=ACCOUNT, changes={"access_token": ACCESS + "2"}),
        ],
        [UserDeactivated(), UserProfileUpdated(changes={"nickname": "x"})],
        [UserDeleted()],
    ]
    for i, events in enumerate(steps):
        with freeze_time(T0 + i * STEP, real_asyncio=True):
            await api.append(user_id, events, metadata={"command_id": f"c{i}", "actor": "tests"})
    return user_id


async def as_of(api: Api, user_id: uuid.UUID, when: datetime | str) -> tuple[int, dict[str, Any]]:
    value = when if isinstance(when, str) else when.isoformat()
    response = await api.client.get(f"/users/{user_id}", params={"as_of": value})
    assert_no_secrets(response.text)
    return response.status_code, response.json()


async def test_as_of_follows_the_log(api: Api) -> None:
    user_id = await write_life(api)
    status, body = await as_of(api, user_id, T0 - timedelta(seconds=1))
    assert (status, body["code"]) == (404, "USER_NOT_FOUND")

    status, body = await as_of(api, user_id, T0)
    assert status == 200
    assert (body["email"], body["version"], body["is_verified"]) == (
        "first@example.com",
        1,
        False,
    )
    assert body["created_at"] == body["updated_at"]

    status, body = await as_of(api, user_id, T0 + STEP + timedelta(minutes=30))
    assert (body["email"], body["version"]) == ("second@example.com", 2)

    status, body = await as_of(api, user_id, T0 + 2 * STEP)
    assert (body["version"], body["is_verified"]) == (4, True)
    [account] = body["oauth_accounts"]
    assert account == {
        "id": str(ACCOUNT),
        "oauth_name": "google",
        "account_id": "g-1",
        "account_email": "second@example.com",
        "expires_at": None,
    }

    status, body = await as_of(api, user_id, T0 + 4 * STEP + timedelta(minutes=59))
    assert (status, body["version"], body["is_active"]) == (200, 8, False)
    assert datetime.fromisoformat(body["created_at"]) == T0
    assert datetime.fromisoformat(body["updated_at"]) == T0 + 4 * STEP

    status, body = await as_of(api, user_id, T0 + 5 * STEP)
    assert (status, body["code"]) == (404, "USER_NOT_FOUND")
    # the read model agrees that the user is gone now
    assert (await api.client.get(f"/users/{user_id}")).status_code == 404


async def test_as_of_naive_time_means_utc_and_bad_time_is_refused(api: Api) -> None:
    user_id = await write_life(api)
    status, body = await as_of(api, user_id, "2031-03-01T10:30:00")
    assert (status, body["email"]) == (200, "second@example.com")
    status, body = await as_of(api, user_id, "2031-03-01T11:30:00+02:00")  # 09:30 UTC
    assert (status, body["email"]) == (200, "first@example.com")
    status, body = await as_of(api, user_id, "yesterday-ish")
    assert (status, body["code"]) == (422, "INVALID_REQUEST")
    status, body = await as_of(api, uuid.uuid4(), T0 + STEP)
    assert status == 404


async def test_history_lists_every_event_redacted_with_metadata(api: Api) -> None:
    user_id = await write_life(api)
    response = await api.client.get(f"/users/{user_id}/history")
    assert response.status_code == 200, response.text
    assert_no_secrets(response.text)
    body = response.json()
    assert body["user_id"] == str(user_id)
    assert body["version"] == 9
    types = [e["event_type"] for e in body["events"]]
    assert types == [
        "UserRegistered",
        "UserEmailChanged",
        "UserVerified",
        "OAuthAccountLinked",
        "UserPasswordChanged",
        "OAuthAccountUpdated",
        "UserDeactivated",
        "UserProfileUpdated",
        "UserDeleted",
    ]
    assert [e["stream_version"] for e in body["events"]] == list(range(1, 10))
    first = body["events"][0]
    assert first["data"]["hashed_password"] == "[redacted]"
    assert first["data"]["email"] == "first@example.com"
    assert first["schema_version"] == 2
    assert first["metadata"] == {"command_id": "c0", "actor": "tests"}
    assert datetime.fromisoformat(first["recorded_at"]) == T0
    linked = body["events"][3]["data"]
    assert linked["access_token"] == "[redacted]"
    assert linked["refresh_token"] is None
    assert body["events"][5]["data"]["changes"] == {"access_token": "[redacted]"}
    times = [datetime.fromisoformat(e["recorded_at"]) for e in body["events"]]
    assert times == sorted(times)
    assert times[-1] == T0 + 5 * STEP


async def test_history_of_unknown_user_is_404(api: Api) -> None:
    response = await api.client.get(f"/users/{uuid.uuid4()}/history")
    assert (response.status_code, response.json()["code"]) == (404, "USER_NOT_FOUND")
