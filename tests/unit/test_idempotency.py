"""Fingerprints that bind an idempotency key to its command (registry.service.idempotency):
stable over redeliveries, different for other content, keyed by the master key, never the
plaintext."""

from __future__ import annotations

import hashlib
import uuid

from pydantic import SecretStr

from events.crypto import Keyring, MasterKey
from registry.domain.commands import (
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)
from registry.service.idempotency import SECRET_GIVEN, _content, fingerprint, matches

K1, K2 = MasterKey.generate(), MasterKey.generate()
USER = uuid.uuid4()


def update(**kw: object) -> UpdateUser:
    return UpdateUser.model_validate({"user_id": str(USER), "command_id": "c1", **kw})


def test_stable_and_blind_to_delivery_metadata() -> None:
    ring = Keyring(K1)
    first = update(password="pw-1", correlation_id="a", causation_id="x")
    again = update(password="pw-1", correlation_id="b", command_id="other")
    assert fingerprint(first, ring) == fingerprint(again, ring)
    assert fingerprint(first, None) == fingerprint(again, None)
    assert matches("update", fingerprint(first, ring), again, ring)


def test_other_content_or_kind_does_not_match() -> None:
    ring = Keyring(K1)
    stored = fingerprint(update(is_verified=True), ring)
    assert not matches("update", stored, update(is_verified=False), ring)
    assert not matches("update", stored, update(is_verified=True, actor="someone"), ring)
    assert not matches("update", stored, EraseUser(user_id=USER), ring)
    erase = fingerprint(EraseUser(user_id=USER), ring)
    assert not matches("erase", erase, EraseUser(user_id=uuid.uuid4()), ring)
    assert not matches("update", erase, EraseUser(user_id=USER), ring)  # the kind recorded


def test_password_is_keyed_never_plain() -> None:
    ring = Keyring(K1)
    command = update(password="correct horse")
    stored = fingerprint(command, ring)
    assert stored.startswith(f"h1:{K1.key_id}:")
    assert "correct horse" not in stored
    # not a hash anyone holding only the database can test guesses against
    plain = _content(command, secrets=True)
    assert hashlib.sha256(plain).hexdigest() not in stored
    assert hashlib.sha256(b"correct horse").hexdigest() not in stored
    assert not matches("update", stored, update(password="correct horsE"), ring)
    assert fingerprint(command, Keyring(K2)) != stored  # another master key, another value


def test_without_a_master_key_secrets_are_only_marked_given() -> None:
    command = update(password="correct horse")
    stored = fingerprint(command, None)
    assert stored.startswith("s1:")
    content = _content(command, secrets=False)
    assert b"correct horse" not in content
    assert SECRET_GIVEN.encode() in content
    # a different password is not told apart (nothing derived from it is stored)...
    assert matches("update", stored, update(password="other"), None)
    # ...but giving one or not is
    assert not matches("update", stored, update(), None)


def test_previous_master_key_still_checks_and_a_retired_one_falls_back_to_the_kind() -> None:
    stored = fingerprint(update(is_active=False), Keyring(K1))
    rotating = Keyring(K2, previous=[K1])
    assert matches("update", stored, update(is_active=False), rotating)
    assert not matches("update", stored, update(is_active=True), rotating)
    retired = Keyring(K2)
    assert matches("update", stored, update(is_active=True), retired)
    assert not matches("update", stored, EraseUser(user_id=USER), retired)


def test_records_without_a_fingerprint_compare_the_kind() -> None:
    assert matches("update", None, update(is_active=True), Keyring(K1))
    assert not matches("update", None, EraseUser(user_id=USER), Keyring(K1))


def test_given_fields_count_where_they_change_the_meaning() -> None:
    ring = Keyring(K1)
    account = uuid.uuid4()
    clears = UpdateOAuthAccount.model_validate(
        {"user_id": str(USER), "oauth_account_id": str(account), "expires_at": None}
    )
    leaves = UpdateOAuthAccount(user_id=USER, oauth_account_id=account)
    assert fingerprint(clears, ring) != fingerprint(leaves, ring)
    # elsewhere an explicit default is the same command as one left out
    explicit = RegisterUser(email="a@x.io", hashed_password="h", is_active=True)
    assert fingerprint(explicit, ring) == fingerprint(
        RegisterUser(email="a@x.io", hashed_password="h"), ring
    )


def test_oauth_tokens_are_secrets_too() -> None:
    def link(token: str) -> LinkOAuthAccount:
        return LinkOAuthAccount(
            user_id=USER,
            oauth_name="gh",
            access_token=SecretStr(token),
            account_id="1",
            account_email="a@x.io",
        )

    ring = Keyring(K1)
    assert not matches("link-oauth", fingerprint(link("t1"), ring), link("t2"), ring)
    assert b"t1" not in _content(link("t1"), secrets=False)
