"""What a write sends to the database, and what it hands back.

On PostgreSQL a command's write is one statement (`registry.service.at_once`), and a batch the
writer projected already only moves the projector's checkpoint; a refused command writes
nothing. The adapter hands back the user a write projected without reading it back, exactly
as a read would give it, and reads it back whenever it cannot be built exactly. Both backends
give the same results; only the statement counts are PostgreSQL's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import pytest
from sqlalchemy import Connection, String, event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, ORMExecuteState, mapped_column
from sqlalchemy.sql import FromClause

from events import EventStore, RecordedEvent, create_engine
from events.scope import scope_of
from events.tables import events
from projections import BaseUserTableUUID, UserProjection
from projections.signals import APPLIED, APPLIED_LIMIT, Applied
from registry import EventSourcedUserDatabase, run_projector
from registry.adapter.runtime import custom_columns
from registry.domain.commands import RegisterUser, UpdateUser
from registry.errors import EmailAlreadyRegisteredError
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers
from registry.settings import Settings
from registry.tables import email_reservations, processed_commands
from tests.support.adapter import OAuthAccount, User, projector_caught_up
from tests.support.waiting import eventually


class Base(DeclarativeBase):
    pass


class NicknamedUser(BaseUserTableUUID, Base):
    """A column the database fills in: the adapter cannot know its value without reading."""

    __tablename__ = "nicknamed_user"
    nickname: Mapped[str] = mapped_column(String(50), server_default=text("'anon'"))


class Sent:
    """Statements and transaction begins that reach the server, with their text."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.begins = 0

    def statement(self, _conn: Connection, _cursor: object, sql: str, *_: object) -> None:
        self.statements.append(sql)

    def begin(self, conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            self.begins += 1


@contextmanager
def sent(engine: AsyncEngine) -> Iterator[Sent]:
    seen = Sent()
    sync = engine.sync_engine
    event.listen(sync, "before_cursor_execute", seen.statement)
    event.listen(sync, "begin", seen.begin)
    try:
        yield seen
    finally:
        event.remove(sync, "before_cursor_execute", seen.statement)
        event.remove(sync, "begin", seen.begin)


async def _count(engine: AsyncEngine, table: FromClause) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


def _handlers(engine: AsyncEngine) -> CommandHandlers:
    return CommandHandlers(
        engine,
        EventStore(engine),
        profile_fields=custom_columns(User),
        own_projection=UserProjection(User, OAuthAccount),
    )


async def test_a_command_is_one_statement_and_a_refusal_writes_nothing(
    engine: AsyncEngine, backend: str
) -> None:
    await ensure_schema(engine, User, OAuthAccount)
    handlers = _handlers(engine)
    pg = backend == "postgresql"

    with sent(engine) as registration:
        a = await handlers.handle(RegisterUser(email="a@x.io", hashed_password="h"))
    assert a.projected
    assert a.version == 1
    if pg:  # the events, data key, reservation and user row: one statement, no BEGIN
        assert len(registration.statements) == 1
        assert registration.begins == 0

    with sent(engine) as update:
        b = await handlers.handle(UpdateUser(user_id=a.user_id, is_verified=True))
    assert (b.version, b.projected) == (2, True)
    if pg:  # decided on the user as these handlers left them: the guarded write alone
        assert len(update.statements) == 1
        assert update.begins == 0

    # an email change moves the reservation in the same statement
    with sent(engine) as moved:
        c = await handlers.handle(UpdateUser(user_id=a.user_id, email="a2@x.io"))
    assert c.version == 3
    if pg:
        assert len(moved.statements) == 1
    async with engine.connect() as conn:
        held = (await conn.execute(select(email_reservations.c.email))).scalars().all()
    assert held == ["a2@x.io"]

    # taken: refused with nothing written, in any letter case
    events_before = await _count(engine, events)
    with sent(engine) as refused, pytest.raises(EmailAlreadyRegisteredError):
        await handlers.handle(RegisterUser(email="A2@x.io", hashed_password="h"))
    if pg:
        assert len(refused.statements) == 1
    assert await _count(engine, events) == events_before
    assert await _count(engine, email_reservations) == 1
    assert await _count(engine, User.__table__) == 1

    # with a command id (the bus): recorded by the same statement; a redelivery answers
    # the first outcome and writes nothing
    with sent(engine) as first:
        d = await handlers.handle(
            RegisterUser(email="d@x.io", hashed_password="h", command_id="cmd-d")
        )
    if pg:
        assert len(first.statements) == 1
    again = await handlers.handle(
        RegisterUser(email="d@x.io", hashed_password="h", command_id="cmd-d")
    )
    assert again.duplicate
    assert again.user_id == d.user_id
    assert await _count(engine, processed_commands) == 1
    assert await _count(engine, User.__table__) == 2


async def test_concurrent_registrations_of_one_address_one_wins(engine: AsyncEngine) -> None:
    await ensure_schema(engine, User, OAuthAccount)
    handlers = _handlers(engine)
    results = await asyncio.gather(
        *(handlers.handle(RegisterUser(email="same@x.io", hashed_password="h")) for _ in range(12)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, EmailAlreadyRegisteredError)]
    assert len(won) == 1
    assert len(refused) == 11
    assert await _count(engine, events) == 1
    assert await _count(engine, email_reservations) == 1
    assert await _count(engine, User.__table__) == 1


async def test_the_adapter_hands_back_what_it_wrote_without_reading_it(
    engine: AsyncEngine, database_url: str
) -> None:
    settings = Settings(database_url=database_url)
    maker = async_sessionmaker(engine, expire_on_commit=False)  # the FastAPI Users docs'
    reads: list[str] = []

    def read(state: ORMExecuteState) -> None:
        if state.is_select:
            reads.append(str(state.statement))

    async with run_projector(engine, User, OAuthAccount, settings=settings):
        async with maker() as session:
            event.listen(session.sync_session, "do_orm_execute", read)
            db: EventSourcedUserDatabase[User, uuid.UUID] = EventSourcedUserDatabase(
                session, User, OAuthAccount
            )
            user = await db.create({"email": "Ann@X.io", "hashed_password": "h"})
            assert reads == []  # handed back as written
            updated = await db.update(user, {"is_verified": True, "first_name": "Ann"})
            assert updated is user
            assert reads == []
            assert user.oauth_accounts == []
        # exactly what a read gives, attribute by attribute
        async with maker() as other:
            reader: EventSourcedUserDatabase[User, uuid.UUID] = EventSourcedUserDatabase(
                other, User, OAuthAccount
            )
            fresh = await reader.get(user.id)
            assert fresh is not None
            columns = [c.key for c in User.__table__.columns]
            assert {k: getattr(user, k) for k in columns} == {k: getattr(fresh, k) for k in columns}
            assert (fresh.email, fresh.is_verified, fresh.first_name, fresh.version) == (
                "ann@x.io",
                True,
                "Ann",
                3,  # two events
            )

        # a session that expires what it loaded on commit: read back, still right
        async with async_sessionmaker(engine)() as session:
            db = EventSourcedUserDatabase(session, User, OAuthAccount)
            got = await db.get(user.id)
            assert got is not None
            changed = await db.update(got, {"is_superuser": True})
            assert (changed.is_superuser, changed.first_name, changed.version) == (True, "Ann", 4)


async def test_a_column_the_database_fills_in_is_read_back(
    engine: AsyncEngine, database_url: str
) -> None:
    settings = Settings(database_url=database_url)
    async with (
        run_projector(engine, NicknamedUser, settings=settings),
        async_sessionmaker(engine, expire_on_commit=False)() as session,
    ):
        db: EventSourcedUserDatabase[NicknamedUser, uuid.UUID] = EventSourcedUserDatabase(
            session, NicknamedUser
        )
        user = await db.create({"email": "n@x.io", "hashed_password": "h"})
        assert user.nickname == "anon"
        assert user.version == 1


async def test_a_batch_its_writer_projected_only_moves_the_checkpoint(
    engine: AsyncEngine, database_url: str, backend: str
) -> None:
    """The in-process projector hears a commit once, and for events the writer projected it
    neither loads nor writes user rows; it keeps no re-reading going after the commit."""
    settings = Settings(database_url=database_url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    async with run_projector(engine, User, OAuthAccount, settings=settings):
        store = EventStore(engine)
        async with maker() as session:
            await EventSourcedUserDatabase(session, User, OAuthAccount).create(
                {"email": "warm@x.io", "hashed_password": "h"}
            )
        await projector_caught_up(engine, store)
        await asyncio.sleep(0.6)  # past any re-reading after that commit
        with sent(engine) as seen:
            async with maker() as session:
                await EventSourcedUserDatabase(session, User, OAuthAccount).create(
                    {"email": "b@x.io", "hashed_password": "h"}
                )
            await asyncio.sleep(0.6)  # the projector's batch, and whatever follows it
        writes = [s for s in seen.statements if "INSERT INTO events" in s]
        projector = [s for s in seen.statements if s not in writes]
        reads = [s for s in projector if "FROM events" in s]
        if backend == "postgresql":
            assert len(writes) == 1
            # read the batch and move the checkpoint (one statement); at most one more look
            assert 1 <= len(reads) <= 2, reads
            assert not any('"user"' in s or "user." in s for s in projector), projector
        else:
            # a partition at a time: the batch, a look after it, and the slow poll every
            # 0.25 s (SQLite's writers in other processes send no signal); nothing like a
            # look every few milliseconds
            assert 4 <= len(reads) <= 6 * 4, reads


def test_applied_events_are_taken_whole_batches_at_a_time_and_bounded() -> None:
    applied = Applied()
    ids = [uuid.uuid4() for _ in range(3)]
    applied.add("users", ids)

    class Rec:
        def __init__(self, event_id: uuid.UUID) -> None:
            self.event_id = event_id

    def batch_of(*event_ids: uuid.UUID) -> list[RecordedEvent]:
        return cast(list[RecordedEvent], [Rec(i) for i in event_ids])  # `take` reads event_id

    assert not applied.take("users", batch_of(ids[0], uuid.uuid4()))  # not all applied
    assert not applied.take("other", batch_of(ids[0]))
    assert applied.take("users", batch_of(ids[0], ids[1]))
    assert not applied.take("users", batch_of(ids[0]))  # taken once
    applied.add("users", (uuid.uuid4() for _ in range(APPLIED_LIMIT + 10)))
    assert not applied.take("users", batch_of(ids[2]))  # the oldest forgotten first


async def test_the_projector_catches_a_commit_held_back_by_an_older_transaction(
    pg_url: str,
) -> None:
    """A commit whose events are behind the read horizon (an older transaction still runs)
    when the projector hears it is projected once that transaction ends, though nothing
    else commits: the projector looks again after its wake-up found nothing."""
    engine = create_engine(pg_url)
    try:
        settings = Settings(database_url=pg_url)
        plain = CommandHandlers(engine, EventStore(engine), profile_fields=custom_columns(User))
        await ensure_schema(engine, User, OAuthAccount)
        async with run_projector(engine, User, OAuthAccount, settings=settings):
            async with engine.connect() as holder:
                await holder.execute(text("SELECT pg_current_xact_id()"))  # an xid: the horizon
                out = await plain.handle(RegisterUser(email="h@x.io", hashed_password="h"))
                await asyncio.sleep(0.2)
                async with engine.connect() as conn:
                    found = await conn.scalar(
                        select(func.count()).where(User.__table__.c.id == out.user_id)
                    )
                assert found == 0  # held back
                await holder.rollback()

            async def projected() -> bool:
                async with engine.connect() as conn:
                    return bool(
                        await conn.scalar(
                            select(func.count()).where(User.__table__.c.id == out.user_id)
                        )
                    )

            # sooner than the slow poll (2 s): the look again after the empty wake-up
            await eventually(projected, timeout=1.0, message="the held-back event projected")
    finally:
        await engine.dispose()


async def test_what_a_writer_projected_is_told_to_its_engines_workers(engine: AsyncEngine) -> None:
    await ensure_schema(engine, User, OAuthAccount)
    out = await _handlers(engine).handle(RegisterUser(email="s@x.io", hashed_password="h"))
    assert scope_of(engine).get(APPLIED).take("users", list(out.events))
    plain = CommandHandlers(engine, EventStore(engine), profile_fields=custom_columns(User))
    out = await plain.handle(RegisterUser(email="t@x.io", hashed_password="h"))
    assert not scope_of(engine).get(APPLIED).take("users", list(out.events))


async def test_a_state_another_writer_moved_on_is_decided_again(engine: AsyncEngine) -> None:
    """Two processes' handlers on one user: each decides on the user as it last wrote them,
    and when the other moved the stream on meanwhile, again on the stream as read. A command
    that would change nothing, or be refused, on a remembered state is decided on the stream
    too."""
    await ensure_schema(engine, User, OAuthAccount)
    one, other = _handlers(engine), _handlers(engine)
    a = await one.handle(RegisterUser(email="x@x.io", hashed_password="h"))
    await one.handle(UpdateUser(user_id=a.user_id, is_verified=True))  # one remembers v2
    await other.handle(UpdateUser(user_id=a.user_id, email="y@x.io"))  # v3, unseen by one
    # on one's remembered state (x@x.io) this changes nothing; on the stream it moves back
    back = await one.handle(UpdateUser(user_id=a.user_id, email="x@x.io"))
    assert back.version == 4
    assert [e.event.event_type for e in back.events] == ["UserEmailChanged"]
    await other.handle(UpdateUser(user_id=a.user_id, is_superuser=True))  # v5
    out = await one.handle(UpdateUser(user_id=a.user_id, is_active=False))  # from v4: stale
    assert out.version == 6
    stream = await EventStore(engine).read_stream(a.user_id)
    assert [e.stream_version for e in stream] == [1, 2, 3, 4, 5, 6]
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(User.__table__).where(User.__table__.c.id == a.user_id))
        ).one()
    assert (row.email, row.is_superuser, row.is_active, row.version) == ("x@x.io", True, False, 6)
    held = await _count(engine, email_reservations)
    assert held == 1
