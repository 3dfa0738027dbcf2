"""FastAPI Users' documented SQLAlchemy example (examples/sqlalchemy_app: upstream's layout,
`create_db_and_tables()` at start-up, plus `async with run_projector(engine, User)`), in this
process: a first start that fails leaves nothing behind that stops the next one.

On PostgreSQL a failed start used to keep the schema's advisory lock on a pooled connection,
so every later start in that process waited forever; on SQLite a failed start left the file
half-migrated, and the retry reported another error than the cause. Here the first start is
made to fail (a table in the way), the cause is removed, and the same app on the same engine
starts again within a bounded time and serves. (The e2e test starts it as a user would.)
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app"
#: upstream's example signs its JWTs with SECRET = "SECRET", as documented (its docs say to
#: change it); PyJWT warns about the key's length on every token
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key is .* bytes long")

#: a start that is not done by then is taken as hung
START_BOUND = 30.0
PASSWORD = "correct horse battery"


def _forget_example() -> None:
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


@pytest.fixture
async def example(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ModuleType]:
    """The example's `app.app` module, imported afresh with DATABASE_URL pointing at the
    test's database (upstream's example makes its engine at import)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    _forget_example()
    module = importlib.import_module("app.app")
    try:
        yield module
    finally:
        await importlib.import_module("app.db").engine.dispose()
        _forget_example()


def messages(exc: BaseException) -> str:
    """Every message in an exception's chain (causes, contexts, groups)."""
    seen: list[str] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        seen.append(f"{type(e).__name__}: {e}")
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
    return "\n".join(seen)


async def advisory_locks(engine: AsyncEngine) -> int:
    """Advisory locks held by any session on this database (other connections than ours)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND pid <> pg_backend_pid()"
            )
        )
        return int(found.scalar_one())


async def user_serves(app: object) -> None:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Starlette's ASGI types
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.post(
            "/auth/register", json={"email": "after@example.com", "password": PASSWORD}
        )
        assert response.status_code == 201, response.text
        login = await client.post(
            "/auth/jwt/login", data={"username": "after@example.com", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        me = await client.get("/users/me", headers=auth)
        assert me.status_code == 200
        assert me.json()["id"] == response.json()["id"]


#: (what is put in the way before the first start, what the error must name, the fix)
CAUSES: dict[str, tuple[Callable[[str], str], tuple[str, ...], str]] = {
    # one of the registry's own tables already there, in another shape: its migration fails
    # (one that nothing reads before the schema is made, so that it fails in the making)
    "registry table in the way": (
        lambda _backend: "CREATE TABLE registry_processed_commands (bogus integer)",
        ("registry_processed_commands",),
        "DROP TABLE registry_processed_commands",
    ),
    # the app's table from an older model without a NOT NULL column: start-up must stop
    "user table lacks a NOT NULL column": (
        lambda backend: (
            'CREATE TABLE "user" (id UUID PRIMARY KEY)'
            if backend == "postgresql"
            else 'CREATE TABLE "user" (id CHAR(32) PRIMARY KEY)'
        ),
        ("user", "email"),
        'DROP TABLE "user"',
    ),
}


@pytest.mark.parametrize("cause", list(CAUSES))
async def test_a_failed_first_start_does_not_stop_the_next(
    example: ModuleType, engine: AsyncEngine, backend: str, cause: str
) -> None:
    make, named, fix = CAUSES[cause]
    async with engine.begin() as conn:
        await conn.execute(text(make(backend)))
    app = example.app

    # what the start fails with is the cause under test, checked below
    with pytest.raises(Exception) as failed:  # noqa: PT011
        async with asyncio.timeout(START_BOUND), app.router.lifespan_context(app):
            pass
    assert not isinstance(failed.value, TimeoutError), "the first start hung"
    reported = messages(failed.value)
    for word in named:  # the original error, not one from a retry
        assert word in reported, reported
    if backend == "postgresql":
        assert await advisory_locks(engine) == 0, "the failed start kept its advisory lock"

    async with engine.begin() as conn:
        await conn.execute(text(fix))
    async with AsyncExitStack() as stack:
        async with asyncio.timeout(START_BOUND):  # the same app, engine and pool: no hang
            await stack.enter_async_context(app.router.lifespan_context(app))
        await user_serves(app)
