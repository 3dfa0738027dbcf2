"""The pure parts of the event log: the catalog, upcasting, redaction, the envelope and the
checks an append request goes through before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from events import (
    EVENT_TYPES,
    Cursor,
    Event,
    InvalidEventError,
    Metadata,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    RecordedEvent,
    UnknownEventTypeError,
    UserActivated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserErased,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserUnverified,
    UserVerified,
    checks,
    event_class,
    shard_of,
)
from events.upcasting import _UPCASTERS, upcast

SECRET = "$argon2id$v=19$m=65536,t=3,p=4$secret-hash"
ACCOUNT = uuid.UUID(int=1)

EXPECTED_TYPES = {
    "UserRegistered",
    "UserEmailChanged",
    "UserPasswordChanged",
    "UserVerified",
    "UserUnverified",
    "UserActivated",
    "UserDeactivated",
    "UserSuperuserGranted",
    "UserSuperuserRevoked",
    "UserProfileUpdated",
    "OAuthAccountLinked",
    "OAuthAccountUpdated",
    "UserDeleted",
    "UserErased",
}


def samples() -> list[Event]:
    return [
        UserRegistered(email="a@example.com", hashed_password=SECRET, profile={"x": [1, None]}),
        UserEmailChanged(email="b@example.com"),
        UserPasswordChanged(hashed_password=SECRET),
        UserVerified(),
        UserUnverified(),
        UserActivated(),
        UserDeactivated(),
        UserSuperuserGranted(),
        UserSuperuserRevoked(),
        UserProfileUpdated(changes={"first_name": "Ada"}),
        OAuthAccountLinked(
            oauth_account_id=ACCOUNT,
            oauth_name="github",
            access_token="gho_access",
            refresh_token="ghr_refresh",
            account_id="1",
            account_email="a@example.com",
        ),
        OAuthAccountUpdated(oauth_account_id=ACCOUNT, changes={"access_token": "gho_new"}),
        UserDeleted(),
        UserErased(),
    ]


# ---------------------------------------------------------------- the catalog
def test_the_catalog_has_one_model_per_kind_of_change() -> None:
    assert set(EVENT_TYPES) == EXPECTED_TYPES
    assert {type(e).event_type for e in samples()} == EXPECTED_TYPES
    for name, cls in EVENT_TYPES.items():
        assert cls.event_type == name == cls.__name__
        assert name.endswith(("ed", "Deleted")), "past tense"
        assert isinstance(cls.schema_version, int)
        assert cls.schema_version >= 1
        assert event_class(name) is cls


def test_events_are_frozen_and_strict_about_fields() -> None:
    event = UserEmailChanged(email="a@example.com")
    with pytest.raises(ValidationError):
        event.email = "b@example.com"
    with pytest.raises(ValidationError, match="extra"):
        UserVerified(colour="red")  # type: ignore[call-arg]  # the unknown field under test
    with pytest.raises(ValidationError):
        UserRegistered(email="x", hashed_password=SECRET)
    with pytest.raises(ValidationError):
        UserProfileUpdated(changes={})
    assert hash(UserVerified()) == hash(UserVerified())


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).event_type)
def test_every_event_survives_its_stored_json_form(event: Event) -> None:
    stored = event.model_dump(mode="json")
    assert type(event).model_validate(stored) == event
    assert checks.payload(event) == stored


def test_an_unknown_type_name_is_named_in_the_error() -> None:
    with pytest.raises(UnknownEventTypeError) as caught:
        event_class("UserTeleported")
    assert caught.value.event_type == "UserTeleported"
    assert "'UserTeleported'" in str(caught.value)


# ---------------------------------------------------------------- upcasting
def test_user_registered_v1_is_upcast_to_v2() -> None:
    assert UserRegistered.schema_version == 2
    v1 = {"email": "old@example.com", "password_hash": "h", "is_superuser": True}
    v2 = upcast("UserRegistered", 1, v1)
    assert v2 == {
        "email": "old@example.com",
        "hashed_password": "h",
        "is_superuser": True,
        "profile": {},
    }
    assert v1 == {"email": "old@example.com", "password_hash": "h", "is_superuser": True}
    assert UserRegistered.model_validate(v2).hashed_password == "h"


def test_current_payloads_pass_through_unchanged() -> None:
    data = {"email": "a@example.com", "hashed_password": "h", "profile": {"k": 1}}
    assert upcast("UserRegistered", 2, data) == data
    assert upcast("UserVerified", 1, {}) == {}


def test_every_old_version_has_an_upcaster_chain() -> None:
    for name, cls in EVENT_TYPES.items():
        for version in range(1, cls.schema_version):
            assert (name, version) in _UPCASTERS, f"{name} v{version} cannot be read"


@pytest.mark.parametrize(
    ("name", "version"),
    [("UserRegistered", 3), ("UserRegistered", 0), ("UserVerified", 2), ("UserTeleported", 1)],
)
def test_versions_the_catalog_cannot_read_are_refused(name: str, version: int) -> None:
    with pytest.raises(UnknownEventTypeError) as caught:
        upcast(name, version, {})
    assert caught.value.event_type == name
    assert repr(name) in str(caught.value)


# ---------------------------------------------------------------- redaction
def test_redaction_hides_every_secret_and_nothing_else() -> None:
    for event in samples():
        shown = event.redacted()
        text = repr(shown)
        for secret in (SECRET, "gho_access", "ghr_refresh", "gho_new"):
            assert secret not in text, type(event).event_type
        for name, value in event.model_dump(mode="json").items():
            if name not in event.secret_fields and name != "changes":
                assert shown[name] == value
    linked = OAuthAccountLinked(
        oauth_account_id=ACCOUNT,
        oauth_name="g",
        access_token="t",
        account_id="1",
        account_email="a@b.c",
    )
    assert linked.redacted()["refresh_token"] is None  # nothing to hide stays None
    updated = OAuthAccountUpdated(
        oauth_account_id=ACCOUNT,
        changes={"refresh_token": None, "expires_at": 5, "access_token": "t"},
    )
    assert updated.redacted()["changes"] == {
        "refresh_token": None,
        "expires_at": 5,
        "access_token": "[redacted]",
    }
    assert updated.changes["access_token"] == "t", "the event itself is untouched"


# ---------------------------------------------------------------- envelope
def test_metadata_is_closed_and_bounded() -> None:
    assert Metadata(actor="ops", command_id="c").as_json() == {"actor": "ops", "command_id": "c"}
    with pytest.raises(ValidationError):
        Metadata(colour="red")  # type: ignore[call-arg]  # the unknown field under test
    with pytest.raises(ValidationError):
        Metadata(command_id="x" * 201)


def test_cursors_order_by_transaction_then_position() -> None:
    assert Cursor.start() == Cursor(0, 0)
    cursors = [Cursor(2, 1), Cursor(1, 9), Cursor(1, 3)]
    ordered = sorted(cursors, key=lambda c: (c.tx_id, c.position))
    assert ordered == [Cursor(1, 3), Cursor(1, 9), Cursor(2, 1)]


def test_shards_are_stable_and_in_range() -> None:
    ids = [uuid.uuid4() for _ in range(2000)]
    shards = [shard_of(i) for i in ids]
    assert all(0 <= s < 256 for s in shards)
    assert len(set(shards)) > 200, "streams spread over the shards"
    assert shard_of(uuid.UUID(int=257)) == 1
    recorded = RecordedEvent(
        position=3,
        tx_id=7,
        stream_id=ids[0],
        stream_version=1,
        event_id=uuid.uuid4(),
        event_type="UserVerified",
        schema_version=1,
        event=UserVerified(),
        metadata=Metadata(),
        recorded_at=datetime.now(UTC),
    )
    assert recorded.cursor == Cursor(7, 3)
    assert recorded.shard == shards[0]


# ---------------------------------------------------------------- append checks
def test_validation_messages_never_repeat_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        UserPasswordChanged(hashed_password=SECRET * 100)
    assert "input_value='$argon2id" in str(caught.value)  # pydantic's own message leaks it
    message = checks.describe(caught.value)
    assert "argon2id" not in message
    assert "input" not in message
    assert message == "hashed_password: String should have at most 1024 characters"


@pytest.mark.parametrize(
    "event",
    [
        UserRegistered.model_construct(email="no", hashed_password=SECRET),
        UserRegistered.model_construct(email="a@b.c"),
        UserRegistered.model_construct(email="a@b.c", hashed_password=SECRET, is_active="yes"),
        UserPasswordChanged.model_construct(hashed_password=SECRET * 100),
        OAuthAccountUpdated.model_construct(oauth_account_id=str(ACCOUNT), changes={"a": 1}),
        UserProfileUpdated(changes={"when": float("nan")}),
        UserProfileUpdated(changes={"t": "\x00"}),
    ],
    ids=["short email", "missing", "coerced bool", "too long", "uuid as text", "nan", "nul"],
)
def test_payloads_that_do_not_match_their_model_are_refused(event: Event) -> None:
    with pytest.raises(InvalidEventError) as caught:
        checks.payload(event)
    assert str(caught.value).startswith(f"{type(event).event_type}: ")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        (checks.stream_uuid, "nope", "stream id must be a UUID"),
        (checks.stream_uuid, 12, "stream id must be a UUID"),
        (lambda v: checks.expected_version(v, 1), -1, ">= 0"),
        (lambda v: checks.expected_version(v, 1), False, ">= 0"),
        (lambda v: checks.expected_version(v, 2), 2**31 - 2, "no room"),
        (checks.metadata, {"actor": 5}, "metadata: actor"),
        (checks.metadata, Metadata.model_construct(actor="x" * 400), "metadata: actor"),
        (checks.recorded_at, datetime(2030, 1, 1), "timezone-aware"),
        (checks.recorded_at, 1_900_000_000, "must be a datetime"),
        (checks.events_and_payloads, UserVerified(), "not a single UserVerified"),
        (checks.events_and_payloads, "UserVerified", "not a single str"),
        (checks.events_and_payloads, [], "at least one event"),
        (checks.events_and_payloads, [UserVerified(), "x"], "a str"),
    ],
)
def test_append_checks_refuse_precisely(
    fn: Callable[..., object], value: object, message: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        fn(value)
    assert message in str(caught.value)


def test_append_checks_accept_good_input() -> None:
    sid = uuid.uuid4()
    assert checks.stream_uuid(sid) is sid
    assert checks.stream_uuid(str(sid).upper()) == sid
    assert checks.expected_version(0, 1000) == 0
    assert checks.metadata(None) == Metadata()
    assert checks.metadata({"actor": "a"}) == Metadata(actor="a")
    paris = timezone(timedelta(hours=1))
    assert checks.recorded_at(datetime(2030, 1, 1, tzinfo=paris)).utcoffset() == timedelta(hours=1)
    checked = checks.events_and_payloads(iter(samples()))
    assert [e for e, _ in checked] == samples()
