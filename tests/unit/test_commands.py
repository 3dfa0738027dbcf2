"""Command models refuse what no entry point may store: NUL, controls and lone surrogates in
strings, addresses the email rule refuses, loosely typed booleans and integers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from registry.domain.commands import (
    COMMANDS,
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)

USER = str(uuid.uuid4())
REGISTER = {"email": "a@example.com", "hashed_password": "h"}
LINK = {
    "user_id": USER,
    "oauth_name": "github",
    "access_token": "t",
    "account_id": "1",
    "account_email": "a@example.com",
}


def refused(cls: type[Any], payload: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        cls.model_validate(payload)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


@pytest.mark.parametrize(
    ("cls", "payload", "field"),
    [
        (RegisterUser, {**REGISTER, "email": "a\x00b@example.com"}, "email"),
        (RegisterUser, {**REGISTER, "command_id": "id\x00"}, "command_id"),
        (RegisterUser, {**REGISTER, "actor": "me\x00"}, "actor"),
        (RegisterUser, {**REGISTER, "correlation_id": "c\x1b"}, "correlation_id"),
        (RegisterUser, {**REGISTER, "causation_id": "c\ud800"}, "causation_id"),
        (RegisterUser, {**REGISTER, "hashed_password": "h\x00"}, "hashed_password"),
        (RegisterUser, {**REGISTER, "hashed_password": None, "password": "p\x00"}, "password"),
        (RegisterUser, {**REGISTER, "profile": {"first_name": "A\x00"}}, "profile"),
        (RegisterUser, {**REGISTER, "profile": {"tags": ["ok", {"k\x00": 1}]}}, "profile"),
        (UpdateUser, {"user_id": USER, "email": "x\u200b@example.com"}, "email"),
        (UpdateUser, {"user_id": USER, "password": "\ud800"}, "password"),
        (LinkOAuthAccount, {**LINK, "oauth_name": "git\x00hub"}, "oauth_name"),
        (LinkOAuthAccount, {**LINK, "account_id": "1\n2"}, "account_id"),
        (LinkOAuthAccount, {**LINK, "account_email": "a\x00@example.com"}, "account_email"),
        (LinkOAuthAccount, {**LINK, "access_token": "t\x00"}, "access_token"),
        (LinkOAuthAccount, {**LINK, "refresh_token": "r\x00"}, "refresh_token"),
        (
            UpdateOAuthAccount,
            {"user_id": USER, "oauth_account_id": USER, "account_email": "\x00"},
            "account_email",
        ),
    ],
)
def test_stored_strings_refuse_nul_controls_and_surrogates(
    cls: type[Any], payload: dict[str, Any], field: str
) -> None:
    errors = refused(cls, payload)
    assert [loc for loc, _ in errors] == [field], errors
    text = " ".join(msg for _, msg in errors)
    # never the value itself
    assert "\x00" not in text
    assert "p\x00" not in text


def test_a_password_may_hold_anything_but_nul_and_surrogates() -> None:
    cmd = UpdateUser.model_validate({"user_id": USER, "password": "tab\there ünïcödé ✓"})
    assert cmd.password is not None


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "1", 1.0, None])
def test_booleans_are_strict(value: object) -> None:
    if value is None:  # explicit null: "not given" on update, refused on register
        assert refused(RegisterUser, {**REGISTER, "is_active": None})
        assert UpdateUser.model_validate({"user_id": USER, "is_active": None}).is_active is None
        return
    for name in ("is_active", "is_superuser", "is_verified"):
        assert refused(RegisterUser, {**REGISTER, name: value})[0][0] == name
        assert refused(UpdateUser, {"user_id": USER, name: value})[0][0] == name


@pytest.mark.parametrize("value", ["5", 5.0, True, "1e3"])
def test_integers_are_strict(value: object) -> None:
    assert refused(RegisterUser, {**REGISTER, "expected_version": value})[0][0] == (
        "expected_version"
    )
    assert refused(LinkOAuthAccount, {**LINK, "expires_at": value})[0][0] == "expires_at"


def test_integers_fit_the_columns_they_go_to() -> None:
    assert refused(LinkOAuthAccount, {**LINK, "expires_at": 2**31})[0][0] == "expires_at"
    assert refused(RegisterUser, {**REGISTER, "expected_version": 2**63})
    ok = LinkOAuthAccount.model_validate({**LINK, "expires_at": 2**31 - 1})
    assert ok.expires_at == 2**31 - 1


def test_real_python_values_pass() -> None:
    # what the adapter passes from FastAPI Users: real bools and ints
    cmd = RegisterUser.model_validate(
        {**REGISTER, "is_active": False, "is_superuser": True, "expected_version": 0}
    )
    assert (cmd.is_active, cmd.is_superuser, cmd.expected_version) == (False, True, 0)


def test_email_is_stored_in_the_canonical_form() -> None:
    cmd = RegisterUser.model_validate({**REGISTER, "email": "  Alice@Example.COM "})
    assert cmd.email == "alice@example.com"
    for name, cls in COMMANDS.items():
        assert cls.name == name
