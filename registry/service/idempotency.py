"""Idempotency keys bound to their command: the processed-commands record.

A command that carries a `command_id` is recorded in its own transaction with its kind and a
fingerprint of its content. The same id again with the same kind and content returns the
first outcome; with anything else it is refused (`IdempotencyKeyReusedError`, nothing done).

The fingerprint covers what the command asks, not how it was delivered: `command_id`,
`correlation_id` and `causation_id` are left out (a client resending after a timeout may
correlate it anew); for `UpdateOAuthAccount`, whose meaning depends on which fields were given
(`expires_at: null` clears it, leaving it out does not), the given fields are in it too. It is
taken from the command as sent, before `prepare()` hashes the password (Argon2 with a random
salt: a hash of the hash would differ on every redelivery) and before ids are generated.

Why an HMAC keyed by the master key, and never a plain hash: the record is stored in the
database, and the content holds the plaintext password (and OAuth tokens). A plain SHA-256 of
it is an offline-guessable fast hash, far cheaper to attack than the Argon2 hash the log keeps;
a salted slow hash would cost an Argon2 run per command. HMAC-SHA256 under a key derived from
the master key (which never touches the database) gives a stable fingerprint that someone
holding only the database cannot test guesses against. The fingerprint names the master key it
was made with, so during a rotation the previous key still checks it; once that key is retired
(or where no master key is configured at all) the secret fields are represented by a marker
saying they were given, never by anything derived from them. Erasing a user clears the
fingerprints of their commands (`forget`), which may cover their email; the kind still binds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from pydantic_core import to_jsonable_python
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from events.claims import taking, took
from events.keyring import Keyring, MasterKey
from registry.domain.commands import Command, UpdateOAuthAccount
from registry.errors import IdempotencyKeyReusedError
from registry.tables import processed_commands

#: fields that say how a command was delivered, not what it asks
DELIVERY_FIELDS = frozenset({"command_id", "correlation_id", "causation_id"})
#: what a secret field is in a fingerprint made without a master key
SECRET_GIVEN = "[secret]"
KEYED = "h1"  # "h1:<master key id>:<HMAC-SHA256 hex>"
UNKEYED = "s1"  # "s1:<SHA-256 hex>", secrets as SECRET_GIVEN
_LABEL = b"registry command fingerprint v1"
_RECORD = taking(processed_commands, processed_commands.c.command_id)
_derived: dict[str, bytes] = {}


def _content(command: Command, *, secrets: bool) -> bytes:
    """The command's kind and content as canonical JSON (sorted keys, no spaces)."""
    body: dict[str, Any] = {}
    for name in type(command).model_fields:
        if name in DELIVERY_FIELDS:
            continue
        value = getattr(command, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value() if secrets else SECRET_GIVEN
        body[name] = to_jsonable_python(value)
    if isinstance(command, UpdateOAuthAccount):
        body["_given"] = sorted(command.model_fields_set - DELIVERY_FIELDS)
    canonical = {"command": command.name, "content": body}
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _key(master: MasterKey) -> bytes:
    """The fingerprint key derived from a master key (HMAC as the PRF: a key of its own, so a
    fingerprint reveals nothing about the master key's other uses)."""
    key = _derived.get(master.key_id)
    if key is None:
        key = _derived[master.key_id] = hmac.new(master.secret, _LABEL, hashlib.sha256).digest()
    return key


def _keyed(master: MasterKey, command: Command) -> str:
    digest = hmac.new(_key(master), _content(command, secrets=True), hashlib.sha256).hexdigest()
    return f"{KEYED}:{master.key_id}:{digest}"


def _unkeyed(command: Command) -> str:
    return f"{UNKEYED}:{hashlib.sha256(_content(command, secrets=False)).hexdigest()}"


def fingerprint(command: Command, keyring: Keyring | None) -> str:
    """The fingerprint to record for `command` (see the module docstring)."""
    return _keyed(keyring.active, command) if keyring is not None else _unkeyed(command)


def matches(kind: str, stored: str | None, command: Command, keyring: Keyring | None) -> bool:
    """Whether `command` is the one recorded as `kind` with fingerprint `stored`. A record
    without a fingerprint (made before they existed, or cleared by an erasure) or made with a
    master key no longer configured is checked by its kind only."""
    if kind != command.name:
        return False
    if stored is None:
        return True
    scheme, _, rest = stored.partition(":")
    if scheme == UNKEYED:
        return hmac.compare_digest(stored, _unkeyed(command))
    if scheme == KEYED and keyring is not None:
        master = keyring.keys.get(rest.partition(":")[0])
        if master is not None:
            return hmac.compare_digest(stored, _keyed(master, command))
    return True


async def record(
    conn: AsyncConnection,
    command: Command,
    fingerprint: str | None,
    user_id: uuid.UUID,
    before: int,
    after: int,
) -> bool:
    """Record the command's id in the caller's transaction; False (nothing written) when the
    id is recorded already (a redelivery, or a reuse: see `prior`)."""
    return await took(conn, _RECORD, record_row(command, fingerprint, user_id, before, after))


def record_row(
    command: Command, fingerprint: str | None, user_id: uuid.UUID, before: int, after: int
) -> dict[str, Any]:
    """The `processed_commands` row that records the command's id."""
    return {
        "command_id": command.command_id,
        "command": command.name,
        "fingerprint": fingerprint,
        "user_id": user_id,
        "from_version": before,
        "to_version": after,
        "processed_at": datetime.now(UTC),
    }


async def prior(
    conn: AsyncConnection, command: Command, keyring: Keyring | None
) -> Row[Any] | None:
    """The record of `command`'s id, or None when there is none. Raises
    `IdempotencyKeyReusedError` when it was recorded for another command."""
    found = (
        await conn.execute(
            select(processed_commands).where(processed_commands.c.command_id == command.command_id)
        )
    ).first()
    if found is not None:
        refuse_reuse(found.command, found.fingerprint, command, keyring)
    return found


def refuse_reuse(kind: str, stored: str | None, command: Command, keyring: Keyring | None) -> None:
    """Raise `IdempotencyKeyReusedError` unless `command` is the one recorded under its id
    (as `kind` with fingerprint `stored`)."""
    if not matches(kind, stored, command, keyring):
        raise IdempotencyKeyReusedError(
            f"command_id {command.command_id!r} was already used for a different command; "
            "nothing was done (use a new command_id for a new command)"
        )


async def forget(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """Clear the fingerprints of a user's commands (in their erasure's transaction)."""
    await conn.execute(
        update(processed_commands)
        .where(
            processed_commands.c.user_id == user_id, processed_commands.c.fingerprint.is_not(None)
        )
        .values(fingerprint=None)
    )
