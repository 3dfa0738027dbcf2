"""Fold and decide: pure functions, no database."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from events import (
    Event,
    Metadata,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    RecordedEvent,
    UserDeleted,
    UserEmailChanged,
    UserErased,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserUnverified,
    UserVerified,
)
from registry.domain.commands import (
    DeleteUser,
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)
from registry.domain.decisions import UserState, decide, fold
from registry.errors import (
    InvalidCommandError,
    OAuthAccountAlreadyLinkedError,
    OAuthAccountNotFoundError,
    UserAlreadyExistsError,
    UserNotFoundError,
)
from registry.service.passwords import check_profile

UID = uuid.uuid4()


def recorded(*items: Event) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            position=i,
            tx_id=0,
            stream_id=UID,
            stream_version=i,
            event_id=uuid.uuid4(),
            event_type=e.event_type,
            schema_version=e.schema_version,
            event=e,
            metadata=Metadata(),
            recorded_at=datetime.now(UTC),
        )
        for i, e in enumerate(items, start=1)
    ]


def registered(**kw: object) -> UserState:
    base: dict[str, object] = {"email": "a@x.io", "hashed_password": "h1"}
    base.update(kw)
    return fold(UID, recorded(UserRegistered.model_validate(base)))


def test_fold_empty_and_registered() -> None:
    assert fold(UID, []) == UserState(user_id=UID)
    state = registered(profile={"first_name": "Ann"})
    assert state.alive
    assert state.version == 1
    assert state.email == "a@x.io"
    assert state.profile == {"first_name": "Ann"}


def test_fold_applies_every_change_in_order() -> None:
    aid = uuid.uuid4()
    state = fold(
        UID,
        recorded(
            UserRegistered(email="a@x.io", hashed_password="h1"),
            UserEmailChanged(email="b@x.io"),
            UserPasswordChanged(hashed_password="h2"),
            UserVerified(),
            UserSuperuserGranted(),
            UserProfileUpdated(changes={"first_name": "Bo"}),
            OAuthAccountLinked(
                oauth_account_id=aid,
                oauth_name="google",
                access_token="t",
                account_id="g1",
                account_email="a@x.io",
            ),
            OAuthAccountUpdated(oauth_account_id=aid, changes={"access_token": "t2"}),
        ),
    )
    assert (state.email, state.hashed_password, state.is_verified, state.is_superuser) == (
        "b@x.io",
        "h2",
        True,
        True,
    )
    assert state.profile == {"first_name": "Bo"}
    assert state.oauth_accounts[aid].access_token == "t2"
    assert state.version == 8


def test_register_emits_one_event_and_refuses_a_taken_id() -> None:
    cmd = RegisterUser(user_id=UID, email="a@x.io", hashed_password="h", profile={"k": 1})
    (event,) = decide(UserState(user_id=UID), cmd)
    assert isinstance(event, UserRegistered)
    assert event.profile == {"k": 1}
    with pytest.raises(UserAlreadyExistsError):
        decide(registered(), cmd)
    with pytest.raises(InvalidCommandError):
        decide(UserState(user_id=UID), RegisterUser(user_id=UID, email="a@x.io"))


def test_update_email_and_password_are_two_events() -> None:
    events = decide(registered(), UpdateUser(user_id=UID, email="b@x.io", hashed_password="h2"))
    expected: list[type] = [UserEmailChanged, UserPasswordChanged]
    assert [type(e) for e in events] == expected


def test_update_that_changes_nothing_emits_nothing() -> None:
    state = registered(profile={"first_name": "Ann"})
    cmd = UpdateUser(
        user_id=UID,
        email="a@x.io",
        hashed_password="h1",
        is_active=True,
        is_verified=False,
        is_superuser=False,
        profile={"first_name": "Ann"},
    )
    assert decide(state, cmd) == []


def test_flags_and_profile_emit_only_what_changed() -> None:
    state = registered(is_verified=True, profile={"a": 1, "b": 2})
    events = decide(state, UpdateUser(user_id=UID, is_verified=False, profile={"a": 1, "b": 3}))
    assert events == [UserUnverified(), UserProfileUpdated(changes={"b": 3})]
    assert decide(registered(), UpdateUser(user_id=UID, is_verified=True)) == [UserVerified()]


@pytest.mark.parametrize(
    "cmd",
    [
        UpdateUser(user_id=UID, email="b@x.io"),
        DeleteUser(user_id=UID),
        UpdateOAuthAccount(user_id=UID, oauth_account_id=uuid.uuid4(), expires_at=1),
    ],
)
def test_unknown_or_deleted_user_is_refused(cmd: UpdateUser) -> None:
    with pytest.raises(UserNotFoundError):
        decide(UserState(user_id=UID), cmd)
    deleted = fold(
        UID, recorded(UserRegistered(email="a@x.io", hashed_password="h"), UserDeleted())
    )
    with pytest.raises(UserNotFoundError):
        decide(deleted, cmd)


def test_oauth_link_update_and_refusals() -> None:
    aid = uuid.uuid4()
    link = LinkOAuthAccount(
        user_id=UID,
        oauth_account_id=aid,
        oauth_name="google",
        access_token=SecretStr("tok"),
        account_id="g1",
        account_email="a@x.io",
    )
    (linked,) = decide(registered(), link)
    assert isinstance(linked, OAuthAccountLinked)
    assert linked.access_token == "tok"
    state = fold(UID, recorded(UserRegistered(email="a@x.io", hashed_password="h"), linked))
    with pytest.raises(OAuthAccountAlreadyLinkedError):
        decide(state, link.model_copy(update={"oauth_account_id": uuid.uuid4()}))
    upd = UpdateOAuthAccount(
        user_id=UID, oauth_account_id=aid, access_token=SecretStr("tok"), expires_at=5
    )
    assert decide(state, upd) == [
        OAuthAccountUpdated(oauth_account_id=aid, changes={"expires_at": 5})
    ]
    assert decide(state, UpdateOAuthAccount(user_id=UID, oauth_account_id=aid)) == []
    with pytest.raises(OAuthAccountNotFoundError):
        decide(state, UpdateOAuthAccount(user_id=UID, oauth_account_id=uuid.uuid4()))


def test_profile_check() -> None:
    assert check_profile({"a": 1}, frozenset({"a"})) == {"a": 1}
    with pytest.raises(InvalidCommandError, match="not columns of the user model: nope"):
        check_profile({"nope": 1}, frozenset({"a"}))
    with pytest.raises(InvalidCommandError, match="built-in"):
        check_profile({"email": "x"}, None)


REG = UserRegistered(email="a@x.io", hashed_password="h1")


def erased_copy(items: list[RecordedEvent]) -> list[RecordedEvent]:
    """The same stream as read once its data key is gone."""
    return [dataclasses.replace(r, erased=True) for r in items]


def test_erase_a_live_or_deleted_user_emits_user_erased() -> None:
    live = fold(UID, recorded(REG))
    assert decide(live, EraseUser(user_id=UID)) == [UserErased()]
    deleted = fold(UID, recorded(REG, UserDeleted()))
    assert decide(deleted, EraseUser(user_id=UID)) == [UserErased()]


def test_erase_an_unknown_user_is_refused() -> None:
    with pytest.raises(UserNotFoundError, match="does not exist"):
        decide(UserState(user_id=UID), EraseUser(user_id=UID))


def test_an_erased_user_is_not_alive_and_refuses_other_commands() -> None:
    stream = erased_copy(recorded(REG, UserEmailChanged(email="[erased]"), UserErased()))
    state = fold(UID, stream)
    assert state.erased
    assert not state.alive
    assert state.version == 3
    for cmd in (
        UpdateUser(user_id=UID, is_verified=True),
        DeleteUser(user_id=UID),
        LinkOAuthAccount.model_validate(
            {
                "user_id": UID,
                "oauth_account_id": uuid.uuid4(),
                "oauth_name": "github",
                "access_token": "t",
                "account_id": "1",
                "account_email": "a@x.io",
            }
        ),
    ):
        with pytest.raises(UserNotFoundError, match="was erased"):
            decide(state, cmd)
    with pytest.raises(UserAlreadyExistsError):
        decide(state, RegisterUser(email="a@x.io", hashed_password="h", user_id=UID))


def test_erasing_twice_changes_nothing() -> None:
    state = fold(UID, erased_copy(recorded(REG, UserErased())))
    assert decide(state, EraseUser(user_id=UID)) == []
    # the UserErased itself marks the state, with or without the key row read as erased
    assert fold(UID, recorded(REG, UserErased())).erased


def test_a_destroyed_key_without_user_erased_is_erased_but_gets_the_event() -> None:
    state = fold(UID, erased_copy(recorded(REG)))
    assert state.erased
    assert not state.alive
    assert decide(state, EraseUser(user_id=UID)) == [UserErased()]
