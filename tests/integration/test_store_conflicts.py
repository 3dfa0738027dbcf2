"""Expected conflicts are answers, not failed statements, on SQLite and PostgreSQL: a stale
append, a taken email or OAuth account, a command_id seen before.

Why it matters on SQLite: SQLAlchemy 2.0's aiosqlite adapter leaves a failed statement's
driver cursor to the garbage collector; freeing it on the event loop while that pooled
connection waits in SQLite's busy handler blocks the loop for the whole busy timeout (30 s,
then "database is locked"). That froze `test_insert_existing_email_any_case[sqlite]` and the
20-appender test in test_store_concurrency.py. The registry no longer patches SQLAlchemy for
it: its expected conflicts never fail a statement. On PostgreSQL they no longer abort the
transaction either (the store's own PostgreSQL appends keep the unique index as their guard).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from events import ConcurrencyError, EventStore, UserRegistered
from events.crypto import Crypto, Keyring, MasterKey
from events.tables import metadata as events_metadata
from registry.domain.commands import LinkOAuthAccount, RegisterUser, UpdateOAuthAccount, UpdateUser
from registry.errors import (
    EmailAlreadyRegisteredError,
    OAuthAccountAlreadyLinkedError,
    UserAlreadyExistsError,
)
from registry.service.handlers import CommandHandlers
from registry.tables import metadata as registry_metadata


@pytest.fixture
def failed(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement that fails on the engine (SQLAlchemy's public `handle_error` hook)."""
    seen: list[str] = []

    def record(context: ExceptionContext) -> None:
        seen.append(f"{type(context.original_exception).__name__}: {context.statement}")

    event.listen(engine.sync_engine, "handle_error", record)
    yield seen
    event.remove(engine.sync_engine, "handle_error", record)


@pytest.fixture
async def handlers(engine: AsyncEngine) -> CommandHandlers:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)
        await conn.run_sync(registry_metadata.create_all)
    crypto = Crypto(Keyring(MasterKey.generate()))
    return CommandHandlers(engine, EventStore(engine, crypto=crypto))


def registered(email: str) -> list[UserRegistered]:
    return [UserRegistered(email=email, hashed_password="h")]


async def test_stale_appends_fail_no_statement_on_sqlite(
    handlers: CommandHandlers, engine: AsyncEngine, backend: str, failed: list[str]
) -> None:
    """On PostgreSQL a stale append is still the unique index's to catch (one statement; the
    error is harmless there), so only the outcome is checked on it."""
    store = handlers.store
    sid = uuid.uuid4()
    await store.append(sid, registered("a@x.io"), expected_version=0)
    for expected in (0, 2):  # a new stream that exists (with its data key row); a gap
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(sid, registered("b@x.io"), expected_version=expected)
        assert caught.value.actual_version == 1
    if backend == "sqlite":
        async with engine.begin() as conn:  # the caller's transaction stays usable
            with pytest.raises(ConcurrencyError):
                await store.append(sid, registered("b@x.io"), expected_version=0, conn=conn)
            await store.append(sid, registered("c@x.io") * 2, expected_version=1, conn=conn)
        assert [e.stream_version for e in await store.read_stream(sid)] == [1, 2, 3]
        assert failed == []
    else:
        assert [e.stream_version for e in await store.read_stream(sid)] == [1]


async def test_a_refused_append_leaves_no_unstored_data_key_in_use(
    handlers: CommandHandlers,
) -> None:
    """A stale append to a "new" stream made a data key for it and kept it cached although it
    was never stored: the stream's next events were sealed with it and could not be read
    back ("sealed data does not open with its data key")."""
    store = handlers.store
    sid = uuid.uuid4()
    await store.append(sid, registered("a@x.io"), expected_version=0)
    with pytest.raises(ConcurrencyError):
        await store.append(sid, registered("b@x.io"), expected_version=0)
    await store.append(sid, registered("c@x.io"), expected_version=1)
    assert [e.event.email for e in await store.read_stream(sid)] == ["a@x.io", "c@x.io"]  # type: ignore[attr-defined]  # the log gives the Event union
    # the same through the handlers: a registration on a taken id, then a change
    taken = await handlers.handle(RegisterUser(email="d@x.io", hashed_password="h"))
    with pytest.raises(UserAlreadyExistsError):
        await handlers.handle(
            RegisterUser(user_id=taken.user_id, email="e@x.io", hashed_password="h")
        )
    await handlers.handle(UpdateUser(user_id=taken.user_id, email="f@x.io"))
    emails = [e.event.email for e in await store.read_stream(taken.user_id)]  # type: ignore[attr-defined]  # the log gives the Event union
    assert emails == ["d@x.io", "f@x.io"]


async def test_taken_reservations_and_seen_command_ids_fail_no_statement(
    handlers: CommandHandlers, failed: list[str]
) -> None:
    a = await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h", command_id="r"))
    b = await handlers.handle(RegisterUser(email="b@x.io", hashed_password="h"))
    assert (
        await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h", command_id="r"))
    ).duplicate
    with pytest.raises(EmailAlreadyRegisteredError):
        await handlers.handle(RegisterUser(email="A@x.io", hashed_password="h"))
    with pytest.raises(EmailAlreadyRegisteredError):
        await handlers.handle(UpdateUser(user_id=b.user_id, email="a@X.io"))

    def link(user: uuid.UUID, account: str) -> LinkOAuthAccount:
        return LinkOAuthAccount(
            user_id=user,
            oauth_name="gh",
            access_token=SecretStr("t"),
            account_id=account,
            account_email="e",
        )

    linked = await handlers.handle(link(a.user_id, "1"))
    with pytest.raises(OAuthAccountAlreadyLinkedError):
        await handlers.handle(link(b.user_id, "1"))
    mine = await handlers.handle(link(b.user_id, "2"))
    with pytest.raises(OAuthAccountAlreadyLinkedError):  # moving onto a taken account id
        await handlers.handle(
            UpdateOAuthAccount(
                user_id=b.user_id,
                oauth_account_id=mine.events[0].event.oauth_account_id,  # type: ignore[attr-defined]  # the log gives the Event union
                account_id="1",
            )
        )
    assert linked.version == 2
    assert failed == []
