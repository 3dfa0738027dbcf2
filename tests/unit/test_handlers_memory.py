"""The command handlers on the in-memory unit of work: the write path's rules without a
database (the same handlers run on SQLite and PostgreSQL in tests/integration)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import SecretStr

from events import UserErased, UserRegistered
from events.memory import InMemoryEventStore
from registry.domain.commands import (
    DeleteUser,
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateUser,
)
from registry.errors import (
    EmailAlreadyRegisteredError,
    IdempotencyKeyReusedError,
    OAuthAccountAlreadyLinkedError,
    UserNotFoundError,
    VersionConflictError,
)
from registry.service.handlers import BaseCommandHandlers, Outcome
from registry.service.memory import InMemoryUnitOfWork

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


@pytest.fixture
def uow() -> InMemoryUnitOfWork:
    return InMemoryUnitOfWork()


@pytest.fixture
def handlers(uow: InMemoryUnitOfWork) -> BaseCommandHandlers:
    return BaseCommandHandlers(uow, profile_fields=frozenset({"first_name"}))


@pytest.fixture
def store(uow: InMemoryUnitOfWork) -> InMemoryEventStore:
    return uow.store


async def register(handlers: BaseCommandHandlers, email: str, **kw: object) -> Outcome:
    return await handlers.handle(RegisterUser(email=email, hashed_password=HASH, **kw))  # type: ignore[arg-type]


async def test_a_registration_appends_one_event(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    out = await register(handlers, "ada@example.com", profile={"first_name": "Ada"})
    assert (out.version, out.duplicate, out.projected) == (1, False, False)
    (recorded,) = await store.read_stream(out.user_id)
    assert isinstance(recorded.event, UserRegistered)
    assert recorded.event.email == "ada@example.com"
    assert recorded.event.profile == {"first_name": "Ada"}
    assert list(out.events) == [recorded]


async def test_an_email_is_taken_once_whatever_its_letter_case(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    await register(handlers, "Ada@Example.com")
    with pytest.raises(EmailAlreadyRegisteredError):
        await register(handlers, "ada@EXAMPLE.com")
    assert (await store.head()).count == 1  # the refused registration wrote nothing


async def test_of_concurrent_registrations_of_one_address_one_wins(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    outcomes = await asyncio.gather(
        *(register(handlers, f"race@{'X' if n % 2 else 'x'}.io") for n in range(20)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Outcome) for o in outcomes) == 1
    assert all(isinstance(o, EmailAlreadyRegisteredError | Outcome) for o in outcomes)
    assert (await store.head()).count == 1


async def test_an_update_with_a_stale_expected_version_is_refused(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    out = await register(handlers, "ada@example.com")
    await handlers.handle(
        UpdateUser(user_id=out.user_id, email="b@example.com", expected_version=1)
    )
    with pytest.raises(VersionConflictError, match="at version 2"):
        await handlers.handle(
            UpdateUser(user_id=out.user_id, email="c@example.com", expected_version=1)
        )
    assert await store.stream_version(out.user_id) == 2


async def test_an_email_change_moves_the_reservation(handlers: BaseCommandHandlers) -> None:
    ada = await register(handlers, "ada@example.com")
    await handlers.handle(UpdateUser(user_id=ada.user_id, email="ada@lovelace.org"))
    await register(handlers, "ADA@example.com")  # the old address is free again
    with pytest.raises(EmailAlreadyRegisteredError):
        await register(handlers, "ada@lovelace.org")


async def test_a_deleted_users_address_can_be_registered_again(
    handlers: BaseCommandHandlers,
) -> None:
    first = await register(handlers, "ada@example.com")
    await handlers.handle(DeleteUser(user_id=first.user_id))
    again = await register(handlers, "Ada@example.com")
    assert again.user_id != first.user_id
    assert again.version == 1
    with pytest.raises(UserNotFoundError):
        await handlers.handle(UpdateUser(user_id=first.user_id, is_verified=True))


async def test_a_repeated_command_id_returns_the_first_outcome(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    command = RegisterUser(email="ada@example.com", hashed_password=HASH, command_id="c-1")
    first = await handlers.handle(command)
    again = await handlers.handle(command)
    assert again.duplicate
    assert not first.duplicate
    assert (again.user_id, again.version, again.events) == (
        first.user_id,
        first.version,
        first.events,
    )
    assert (await store.head()).count == 1
    with pytest.raises(IdempotencyKeyReusedError):
        await handlers.handle(
            RegisterUser(email="bob@example.com", hashed_password=HASH, command_id="c-1")
        )
    with pytest.raises(IdempotencyKeyReusedError):
        await handlers.handle(DeleteUser(user_id=first.user_id, command_id="c-1"))
    assert (await store.head()).count == 1


async def test_a_command_id_on_a_refused_command_is_not_recorded(
    handlers: BaseCommandHandlers, uow: InMemoryUnitOfWork
) -> None:
    await register(handlers, "ada@example.com")
    with pytest.raises(EmailAlreadyRegisteredError):
        await register(handlers, "ada@example.com", command_id="c-2")
    assert "c-2" not in uow.kept.processed


async def test_an_oauth_account_is_linked_to_one_user(
    handlers: BaseCommandHandlers, store: InMemoryEventStore
) -> None:
    ada = await register(handlers, "ada@example.com")
    bob = await register(handlers, "bob@example.com")

    def link(user_id: uuid.UUID) -> LinkOAuthAccount:
        return LinkOAuthAccount(
            user_id=user_id,
            oauth_name="google",
            access_token=SecretStr("tok"),
            account_id="g-1",
            account_email="x@gmail.com",
        )

    await handlers.handle(link(ada.user_id))
    with pytest.raises(OAuthAccountAlreadyLinkedError):
        await handlers.handle(link(bob.user_id))
    assert await store.stream_version(bob.user_id) == 1


async def test_erasure_frees_the_address_and_forgets_fingerprints(
    handlers: BaseCommandHandlers, store: InMemoryEventStore, uow: InMemoryUnitOfWork
) -> None:
    ada = await register(handlers, "ada@example.com", command_id="c-ada")
    out = await handlers.handle(EraseUser(user_id=ada.user_id))
    assert [type(r.event) for r in out.events] == [UserErased]
    stream = await store.read_stream(ada.user_id)
    assert len(stream) == 2
    assert all(r.erased for r in stream)
    assert "ada@example.com" not in repr([r.event for r in stream])
    assert uow.kept.processed["c-ada"].fingerprint is None
    await register(handlers, "ada@example.com")
    with pytest.raises(UserNotFoundError, match="was erased"):
        await handlers.handle(UpdateUser(user_id=ada.user_id, is_verified=True))


async def test_projections_need_a_database(uow: InMemoryUnitOfWork) -> None:
    class Projection:
        async def apply_own(self, _conn: object, _recorded: object, _after_version: int) -> bool:
            raise AssertionError("never called")

    handlers = BaseCommandHandlers(uow, own_projection=Projection())
    with pytest.raises(TypeError, match="in-memory unit of work"):
        await register(handlers, "ada@example.com")
    assert (await uow.store.head()).count == 0
