"""Master keys from settings, and turning encryption on for an engine.

Where the master key comes from, in order:

1. `REGISTRY_MASTER_KEY` (URL-safe base64 of 32 bytes; `registry keygen` prints one);
2. the key file `REGISTRY_MASTER_KEY_FILE` (default `./registry.key`) when it exists: it must
   be readable by its owner only (mode 0600), as ssh requires of private keys;
3. on SQLite (the embedded default) with neither: a new key generated into that file, created
   owner-only;
4. otherwise (PostgreSQL): an error naming `REGISTRY_MASTER_KEY`.

`REGISTRY_PREVIOUS_MASTER_KEYS` (comma-separated) adds keys being retired: they still unwrap
data keys while `registry rotate-master-key` re-wraps them with the active key.

An app marks its own personal columns so that their values are sealed in the log too:

    phone: Mapped[str | None] = mapped_column(String(255), info={"personal": True})
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from events.crypto import Crypto, Keyring, MasterKey, MasterKeyError, attach, crypto_of, verify
from events.tables import data_keys
from registry.settings import Settings

log = logging.getLogger("registry.keys")

MASTER_KEY_VAR = "REGISTRY_MASTER_KEY"
PREVIOUS_KEYS_VAR = "REGISTRY_PREVIOUS_MASTER_KEYS"
KEY_FILE_VAR = "REGISTRY_MASTER_KEY_FILE"


def read_key_file(path: Path) -> MasterKey:
    """The master key kept in `path`; refused when group or others may read it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise MasterKeyError(
            f"cannot read the master key file {path} ({KEY_FILE_VAR}): {exc}"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(
            f"the master key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}` ({KEY_FILE_VAR})"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(
            f"cannot read the master key file {path} ({KEY_FILE_VAR}): {exc}"
        ) from None
    return MasterKey.parse(text, source=f"the master key file {path} ({KEY_FILE_VAR})")


def write_key_file(path: Path, key: MasterKey) -> bool:
    """Create `path` holding `key`, owner-only (0600), never replacing a file; False when the
    file exists already (another process made it first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # write a private temporary file, then link it into place: the key file appears whole and
    # the link fails when one exists already
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(key):x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.encoded() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_keyring(settings: Settings, *, generate: bool = True) -> Keyring:
    """The keyring of this process (see the module docstring). Raises `MasterKeyError` with
    the variable to fix. `generate`: allow making the embedded default's key file."""
    previous = [
        MasterKey.parse(k.get_secret_value(), source=f"{PREVIOUS_KEYS_VAR} (key {i})")
        for i, k in enumerate(settings.previous_master_keys, start=1)
    ]
    if settings.master_key is not None:
        active = MasterKey.parse(settings.master_key.get_secret_value(), source=MASTER_KEY_VAR)
        return Keyring(active, previous)
    path = settings.master_key_file
    if not path.exists():
        if not (generate and settings.is_sqlite):
            raise MasterKeyError(
                f"{MASTER_KEY_VAR} is not set and there is no master key file {path}: set "
                f"{MASTER_KEY_VAR} to a key made with `registry keygen` (or {KEY_FILE_VAR} to "
                "a file holding one, mode 0600)"
            )
        if write_key_file(path, MasterKey.generate()):
            log.warning(
                "generated a new master key into %s (owner-only): keep it and back it up, the "
                "personal data in the log cannot be read without it",
                path.resolve(),
            )
    return Keyring(read_key_file(path), previous)


def personal_columns(*models: Any) -> frozenset[str]:
    """Columns of the models marked personal: `mapped_column(..., info={"personal": True})`."""
    found: set[str] = set()
    for model in models:
        if model is None:
            continue
        table = getattr(model, "__table__", model)
        for column in table.columns:
            if column.info.get("personal"):
                found.add(column.key)
        with contextlib.suppress(Exception):  # mapped attribute names, when they differ
            for attr in inspect(model).column_attrs:
                if any(c.info.get("personal") for c in attr.columns):
                    found.add(attr.key)
    return frozenset(found)


def _has_keys_table(sync_conn: Connection) -> bool:
    return inspect(sync_conn).has_table(data_keys.name)


async def _verify(engine: AsyncEngine, keyring: Keyring) -> None:
    """`verify`, on a database whose schema may not exist yet (nothing stored: nothing to
    check; whoever creates the schema runs first)."""
    try:
        await verify(engine, keyring)
    except DBAPIError:
        async with engine.connect() as conn:
            if await conn.run_sync(_has_keys_table):
                raise


#: engines whose attached Crypto was checked against the stored data keys, and the lock that
#: makes concurrent first uses (many adapter writes at once) check once
_VERIFIED: weakref.WeakKeyDictionary[Any, Crypto] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def enabled(engine: AsyncEngine) -> bool:
    """True when `enable` already ran for this engine (its Crypto is attached and checked)."""
    crypto = crypto_of(engine)
    return crypto is not None and _VERIFIED.get(engine.sync_engine) is crypto


async def enable(engine: AsyncEngine, settings: Settings, *models: Any) -> Crypto:
    """Seal personal data on `engine` from now on: the keyring from settings, the personal
    columns of `models` plus `REGISTRY_PERSONAL_FIELDS`, checked against the stored data keys
    (`events.crypto.verify`), then attached. Call it once the schema exists and before anything
    is written. A Crypto the app attached itself is kept (and checked).

    Idempotent per engine. Raises `MasterKeyError` (wrong or missing key: nothing written)."""
    columns = personal_columns(*models) | frozenset(settings.personal_fields)
    lock = _LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _LOCKS[engine.sync_engine] = asyncio.Lock()
    async with lock:
        crypto = crypto_of(engine)
        if crypto is None:
            keyring = load_keyring(settings)
            await _verify(engine, keyring)
            crypto = Crypto(keyring, columns)
            attach(engine, crypto)
        elif _VERIFIED.get(engine.sync_engine) is not crypto:
            await _verify(engine, crypto.keyring)
        crypto.mark_personal(columns)
        _VERIFIED[engine.sync_engine] = crypto
        return crypto


__all__ = [
    "MasterKeyError",
    "enable",
    "enabled",
    "load_keyring",
    "personal_columns",
    "read_key_file",
    "write_key_file",
]
