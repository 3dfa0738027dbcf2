"""A lost database connection never reaches a client while the database comes back at once, on
PostgreSQL: backends terminated (pg_terminate_backend) again and again under a load of API
reads, adapter reads and commands with a command_id give no error, and apply each command
once. A database that stays down gives a clear error, fast (no hang).

Not covered: a backend terminated after the adapter's read returned and before the app closes
its session makes that close raise (SQLAlchemy re-raises the failed ROLLBACK); that is the
app's session, after the adapter is done. The test counts it apart and prints it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from events import EventStore, UserRegistered, create_engine
from events.tables import events
from projections import OAuthAccount, User, UserProjection
from projections.status import projection_status
from projections.worker import ProjectionWorker
from registry.api import create_app
from registry.domain.commands import RegisterUser, UpdateUser
from registry.service.handlers import CommandHandlers
from registry.tables import metadata as registry_metadata
from tests.support.adapter import UserDatabase
from tests.support.api import Api, auth, create_tables, make_container, open_api
from tests.support.waiting import eventually

TERMINATIONS = 10
CLIENTS = 6


class FastHasher:
    def hash(self, password: str) -> str:
        return "fake$" + password[::-1]


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, Api, CommandHandlers]]:
    engine = create_engine(pg_url)
    api = await open_api(engine)
    async with engine.begin() as conn:
        await conn.run_sync(registry_metadata.create_all)
    handlers = CommandHandlers(
        engine,
        api.store,
        password_helper=FastHasher(),
        own_projection=UserProjection(User, OAuthAccount),
    )
    try:
        yield engine, api, handlers
    finally:
        await api.client.aclose()
        await engine.dispose()


async def terminate_backends(dsn: str) -> int:
    """What an administrator (or a failover) does: end every other session of the database."""
    conn = await asyncpg.connect(dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(killed or 0)
    finally:
        await conn.close()


async def test_terminated_backends_reach_no_client(
    pg: tuple[AsyncEngine, Api, CommandHandlers], pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine, api, handlers = pg
    caplog.set_level(logging.WARNING, logger="registry.service.retry")
    users = []
    for i in range(CLIENTS):
        out = await handlers.handle(
            RegisterUser(
                email=f"client{i}@example.com", password=SecretStr("pw"), command_id=f"reg-{i}"
            )
        )
        users.append(out.user_id)
    async with AsyncSession(engine) as session:  # the adapter's one-time set-up, done first
        db = UserDatabase(session, User)
        assert await db.get(users[0]) is not None
    errors: Counter[str] = Counter()
    done: Counter[str] = Counter()
    teardown_errors: Counter[str] = Counter()
    sent: list[str] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        user_id, n = users[i], 0
        while not stop.is_set():
            n += 1
            command_id = f"upd-{i}-{n}"
            try:
                await handlers.handle(
                    UpdateUser(user_id=user_id, profile={}, is_verified=n % 2 == 0,
                               command_id=command_id)
                )  # fmt: skip
                sent.append(command_id)
                done["command"] += 1
            # whatever reaches the client is counted, and the test fails on any
            except Exception as exc:  # noqa: BLE001
                errors[f"command {type(exc).__name__}: {exc}"] += 1
            for path in (f"/users/{user_id}", f"/users?email=client{i}@example.com"):
                response = await api.client.get(path)
                if response.status_code == 200:
                    done["api read"] += 1
                else:
                    errors[f"GET {path.split('?')[0]} {response.status_code}"] += 1
            session = AsyncSession(engine, expire_on_commit=False)
            try:
                found = await UserDatabase(session, User).get(user_id)
                assert found is not None
                done["adapter read"] += 1
            except Exception as exc:  # noqa: BLE001
                errors[f"adapter {type(exc).__name__}: {exc}"] += 1
            try:  # the app's own session teardown (see the module docstring)
                await session.close()
            except Exception:  # noqa: BLE001
                teardown_errors["session close"] += 1

    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    killed = 0
    try:
        for _ in range(TERMINATIONS):
            await asyncio.sleep(0.3)
            killed += await terminate_backends(dsn)
        await asyncio.sleep(0.25)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert killed >= TERMINATIONS, "the terminations hit no connection"
    assert done["command"] >= 10, done
    assert done["api read"] >= 20, done
    assert done["adapter read"] >= 10, done
    assert not errors, f"client-visible errors: {dict(errors)} (of {dict(done)})"
    print(f"load: {dict(done)}, {killed} backends terminated, teardown: {dict(teardown_errors)}")
    retried = [r for r in caplog.records if "trying once more" in r.getMessage()]
    assert retried, "no operation ever met a lost connection"
    # each command applied once: one event per accepted update that changed something at most
    async with engine.connect() as conn:
        stored = await conn.scalar(
            select(func.count()).select_from(events).where(events.c.event_type != "UserRegistered")
        )
    assert (stored or 0) <= len(sent)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_database_that_stays_down_gives_a_clear_error_fast() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nothing"
    engine = create_engine(url)
    app = create_app(make_container(engine))
    started = time.monotonic()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry.test", headers=auth()
    ) as client:
        response = await client.get(f"/users/{uuid.uuid4()}")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "DATABASE_UNAVAILABLE"
        assert response.headers["retry-after"] == "1"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "NOT_READY"
    handlers = CommandHandlers(engine, EventStore(engine), password_helper=FastHasher())
    with pytest.raises(OSError):  # noqa: PT011  # any connection failure, as the driver reports it
        await handlers.handle(
            RegisterUser(email="down@example.com", password=SecretStr("pw"), command_id="down-1")
        )
    async with AsyncSession(engine) as session:
        with pytest.raises(OSError):  # noqa: PT011  # any connection failure, as the driver reports it
            await UserDatabase(session, User).get(uuid.uuid4())
    await engine.dispose()
    assert time.monotonic() - started < 10


async def test_the_projector_pauses_for_a_lost_connection_and_counts_no_attempt(
    pg_url: str,
) -> None:
    """With max_attempts=1 any failure counted against an event fails its partition at once:
    terminated backends must count as none, and the projector catches up by itself."""

    engine = create_engine(pg_url)
    # the test's own writer never meets a dead connection (a new one each time)
    writer = EventStore(create_async_engine(pg_url, poolclass=NullPool))
    await create_tables(engine)
    worker = ProjectionWorker(
        engine,
        EventStore(engine),
        UserProjection(User, OAuthAccount),
        partitions=4,
        batch_size=20,
        lease_ttl=1.5,
        max_attempts=1,
        retry_backoff=0.02,
        retry_backoff_max=0.1,
    )
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    task = asyncio.create_task(worker.run())
    try:
        for round_ in range(6):
            for i in range(30):
                event = UserRegistered(email=f"r{round_}-{i}@example.com", hashed_password="h")
                await writer.append(uuid.uuid4(), [event], expected_version=0)
            writer.committed()
            await asyncio.sleep(0.05)
            await terminate_backends(dsn)

        async def caught_up() -> bool:
            found = [s for s in await projection_status(engine, worker.store) if s.name == "users"]
            assert not [s for s in found if s.state != "ok"], found
            return bool(found) and all(s.lag_events == 0 for s in found)

        await eventually(caught_up, timeout=30, message="the worker to catch up")
    finally:
        await worker.shut_down(task, grace=5)
        await writer.engine.dispose()
        await engine.dispose()
