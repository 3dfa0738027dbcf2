"""The real FastAPI Users app (examples/fastapi_users_app.py) on the event log, over HTTP.

Every request goes through httpx's ASGI transport into the app with its lifespan running (the
in-process projector). Each change must be visible in the very next request (read-your-writes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from fastapi_users.password import PasswordHelper
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import func, select

from events import EventStore
from events.tables import events
from examples.fastapi_users_app import User, create_app
from tests.support.adapter import UserDatabase

PASSWORD = "correct horse battery"
SECRET = "a test secret of at least thirty-two bytes"

#: Argon2 with small costs: FastAPI Users hashes on the event loop, and 50 default-cost hashes
#: on a loaded 2-core machine take seconds; what is tested here is the registry, not Argon2
FAST_PASSWORDS = PasswordHelper(
    PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
)


@dataclass
class Outbox:
    """The app's mailer: keeps (kind, email, token) instead of sending."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, kind: str, email: str, token: str) -> None:
        self.sent.append((kind, email, token))

    def last(self, kind: str, email: str) -> str:
        tokens = [t for k, e, t in self.sent if k == kind and e.lower() == email.lower()]
        assert tokens, f"no {kind} mail to {email}: {self.sent}"
        return tokens[-1]


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    outbox: Outbox

    async def register(
        self, email: str, password: str = PASSWORD, **extra: object
    ) -> httpx.Response:
        return await self.client.post(
            "/auth/register", json={"email": email, "password": password, **extra}
        )

    async def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        return await self.client.post(
            "/auth/jwt/login", data={"username": username, "password": password}
        )

    async def token(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        response = await self.login(username, password)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def promote(self, user_id: str) -> None:
        """Make a superuser the way a script would: through the adapter."""
        async with self.app.state.session_maker() as session:
            db = UserDatabase(session, User)
            user = await db.get(uuid.UUID(user_id))
            assert user is not None
            await db.update(user, {"is_superuser": True})

    async def count_events(self, event_type: str, stream_id: str | None = None) -> int:
        stmt = select(func.count()).select_from(events).where(events.c.event_type == event_type)
        if stream_id is not None:
            stmt = stmt.where(events.c.stream_id == uuid.UUID(stream_id))
        async with self.app.state.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def versions(self, stream_id: str) -> list[int]:
        stmt = (
            select(events.c.stream_version)
            .where(events.c.stream_id == uuid.UUID(stream_id))
            .order_by(events.c.stream_version)
        )
        async with self.app.state.engine.connect() as conn:
            return list((await conn.execute(stmt)).scalars())


@pytest.fixture
async def http(database_url: str) -> AsyncIterator[Harness]:
    outbox = Outbox()
    app = create_app(database_url, secret=SECRET, mailer=outbox, password_helper=FAST_PASSWORDS)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield Harness(app, client, outbox)


async def test_register_login_me_and_update_visible_at_once(http: Harness) -> None:
    response = await http.register("Alice@Example.com", first_name="Alice")
    assert response.status_code == 201, response.text
    alice = response.json()
    assert alice["email"] == "alice@example.com"  # stored in the canonical form (events.emails)
    assert alice["first_name"] == "Alice"
    assert (alice["is_active"], alice["is_superuser"], alice["is_verified"]) == (True, False, False)
    assert "hashed_password" not in alice
    assert "password" not in alice

    # the typed username in any letter case logs in (get_by_email ignores case)
    for username in ("Alice@example.com", "alice@example.com", "ALICE@EXAMPLE.COM"):
        assert (await http.login(username)).status_code == 200, username
    assert (await http.login("alice@example.com", "wrong")).json()["detail"] == (
        "LOGIN_BAD_CREDENTIALS"
    )
    auth = await http.token("alice@example.com")

    me = await http.client.get("/users/me", headers=auth)
    assert me.status_code == 200
    assert me.json()["id"] == alice["id"]
    assert me.json()["first_name"] == "Alice"

    patched = await http.client.patch("/users/me", json={"first_name": "Al"}, headers=auth)
    assert patched.status_code == 200
    assert patched.json()["first_name"] == "Al"
    assert (await http.client.get("/users/me", headers=auth)).json()["first_name"] == "Al"

    # a new password works in the very next request, the old one no longer does
    response = await http.client.patch("/users/me", json={"password": "new secret"}, headers=auth)
    assert response.status_code == 200
    assert (await http.login("alice@example.com")).status_code == 400
    assert (await http.login("alice@example.com", "new secret")).status_code == 200

    # email change: visible at once, login by the new address, the old one is free again
    response = await http.client.patch(
        "/users/me", json={"email": "alice.new@example.com"}, headers=auth
    )
    assert response.status_code == 200
    assert response.json()["email"] == "alice.new@example.com"
    assert (await http.login("ALICE.NEW@example.com", "new secret")).status_code == 200
    assert (await http.register("alice@example.com")).status_code == 201

    # taking another user's address (in another letter case) is refused, nothing appended
    before = await http.versions(alice["id"])
    response = await http.client.patch(
        "/users/me", json={"email": "ALICE@example.com"}, headers=auth
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "UPDATE_USER_EMAIL_ALREADY_EXISTS"
    assert await http.versions(alice["id"]) == before

    assert (await http.client.get("/users/me")).status_code == 401
    assert (await http.client.get("/authenticated-route", headers=auth)).status_code == 200


async def test_patch_with_null_email_or_password_is_not_a_server_error(http: Harness) -> None:
    assert (await http.register("nulls@example.com")).status_code == 201
    auth = await http.token("nulls@example.com")
    for body in ({"password": None}, {"email": None}, {"email": None, "first_name": "N"}):
        response = await http.client.patch("/users/me", json=body, headers=auth)
        assert response.status_code < 500, (body, response.text)
    me = (await http.client.get("/users/me", headers=auth)).json()
    assert me["email"] == "nulls@example.com"
    assert (await http.login("nulls@example.com")).status_code == 200


async def test_superuser_reads_updates_and_deletes_by_id(http: Harness) -> None:
    admin = (await http.register("admin@example.com")).json()
    bob = (await http.register("bob@example.com", first_name="Bob")).json()
    bob_auth = await http.token("bob@example.com")
    assert (await http.client.get(f"/users/{admin['id']}", headers=bob_auth)).status_code == 403

    await http.promote(admin["id"])
    auth = await http.token("admin@example.com")
    response = await http.client.get(f"/users/{bob['id']}", headers=auth)
    assert response.status_code == 200
    assert response.json()["first_name"] == "Bob"
    assert (await http.client.get(f"/users/{uuid.uuid4()}", headers=auth)).status_code == 404

    response = await http.client.patch(
        f"/users/{bob['id']}",
        json={"first_name": "Robert", "is_verified": True, "is_superuser": True},
        headers=auth,
    )
    assert response.status_code == 200
    got = (await http.client.get(f"/users/{bob['id']}", headers=auth)).json()
    assert (got["first_name"], got["is_verified"], got["is_superuser"]) == ("Robert", True, True)

    response = await http.client.patch(
        f"/users/{bob['id']}", json={"is_active": False}, headers=auth
    )
    assert response.status_code == 200
    assert (await http.client.get("/users/me", headers=bob_auth)).status_code == 401

    assert (await http.client.delete(f"/users/{bob['id']}", headers=auth)).status_code == 204
    assert (await http.client.get(f"/users/{bob['id']}", headers=auth)).status_code == 404
    assert (await http.login("bob@example.com")).status_code == 400
    assert await http.count_events("UserDeleted", bob["id"]) == 1
    # the address is free again once the user is deleted
    assert (await http.register("BOB@example.com")).status_code == 201


async def test_verify_and_reset_password_with_mailed_tokens(http: Harness) -> None:
    user = (await http.register("carol@example.com")).json()
    response = await http.client.post(
        "/auth/request-verify-token", json={"email": "carol@example.com"}
    )
    assert response.status_code == 202
    token = http.outbox.last("verify", "carol@example.com")
    response = await http.client.post("/auth/verify", json={"token": token})
    assert response.status_code == 200
    assert response.json()["is_verified"] is True
    auth = await http.token("carol@example.com")
    assert (await http.client.get("/users/me", headers=auth)).json()["is_verified"] is True
    response = await http.client.post("/auth/verify", json={"token": token})
    assert response.json()["detail"] == "VERIFY_USER_ALREADY_VERIFIED"

    response = await http.client.post("/auth/forgot-password", json={"email": "carol@example.com"})
    assert response.status_code == 202
    token = http.outbox.last("reset-password", "carol@example.com")
    response = await http.client.post(
        "/auth/reset-password", json={"token": token, "password": "brand new"}
    )
    assert response.status_code == 200, response.text
    assert (await http.login("carol@example.com")).status_code == 400
    assert (await http.login("carol@example.com", "brand new")).status_code == 200
    # the token is bound to the old password hash: it cannot be used twice
    response = await http.client.post(
        "/auth/reset-password", json={"token": token, "password": "again"}
    )
    assert response.json()["detail"] == "RESET_PASSWORD_BAD_TOKEN"
    assert await http.count_events("UserPasswordChanged", user["id"]) == 1
    assert await http.count_events("UserVerified", user["id"]) == 1


async def test_50_concurrent_registrations_of_one_address(http: Harness) -> None:
    emails = [
        "race@example.com"
        if i % 2 == 0
        else "Race@example.com"
        if i % 4 == 1
        else "RACE@EXAMPLE.COM"
        for i in range(50)
    ]
    responses = await asyncio.gather(*(http.register(email) for email in emails))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [400] * 49, [r.text for r in responses if r.status_code != 400]
    for response in responses:
        if response.status_code == 400:
            assert response.json()["detail"] == "REGISTER_USER_ALREADY_EXISTS"
    assert await http.count_events("UserRegistered") == 1
    winner = next(r for r in responses if r.status_code == 201).json()
    assert (await http.login("rAcE@example.com")).status_code == 200
    auth = await http.token("race@example.com")
    assert (await http.client.get("/users/me", headers=auth)).json()["id"] == winner["id"]


async def test_20_concurrent_patches_lose_no_update(http: Harness) -> None:
    user = (await http.register("patch@example.com", first_name="start")).json()
    auth = await http.token("patch@example.com")

    def body(i: int) -> dict[str, str]:
        return {"first_name": f"name-{i}"} if i % 2 == 0 else {"email": f"patch-{i}@example.com"}

    responses = await asyncio.gather(
        *(http.client.patch("/users/me", json=body(i), headers=auth) for i in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]

    versions = await http.versions(user["id"])
    assert versions == list(range(1, 22))  # registered + one event per PATCH, no gaps
    # the final state is the last write of each field, from the log (opened: the email is
    # sealed at rest with the app's master key), at once
    recorded = await EventStore(http.app.state.engine).read_stream(uuid.UUID(user["id"]))
    rows = [(r.event_type, r.event.model_dump()) for r in recorded]
    last_name = [d["changes"]["first_name"] for t, d in rows if t == "UserProfileUpdated"][-1]
    last_email = [d["email"] for t, d in rows if t == "UserEmailChanged"][-1]
    assert len([t for t, _ in rows if t == "UserProfileUpdated"]) == 10
    assert len([t for t, _ in rows if t == "UserEmailChanged"]) == 10
    me = (await http.client.get("/users/me", headers=auth)).json()
    assert (me["first_name"], me["email"]) == (last_name, last_email)
