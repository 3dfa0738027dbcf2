"""Master keys from settings, and turning encryption on for an engine.

Where the master key comes from, in order:

1. `REGISTRY_MASTER_KEY` (URL-safe base64 of 32 bytes; `registry keygen` prints one);
2. the key file `REGISTRY_MASTER_KEY_FILE` when it exists; unset, the key file beside the
   SQLite database file the engine uses (`registry.db` -> `registry.key`), so every process on
   that file, whatever its working directory, uses the same key. It must be readable by its
   owner only (mode 0600), as ssh requires of private keys;
3. on a file-backed SQLite engine (the embedded default) with neither: a new key generated
   into that file, created owner-only; an in-memory SQLite engine gets a key of its own that
   lives as long as the process (so does its data);
4. otherwise (PostgreSQL): an error naming `REGISTRY_MASTER_KEY`.

Whether a key may be generated is decided by the engine actually used, never by the
settings' default URL. A database records the key it was created with (`event_master_key`):
a process with any other key is refused before it writes anything.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Table, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from events.crypto import Crypto, attach, crypto_of
from events.keyring import Keyring, MasterKey, MasterKeyError
from events.master_key import claim_master_key, verify
from events.scope import Slot, scope_of
from events.tables import data_keys, master_key_record
from registry.settings import Settings

log = logging.getLogger("registry.service.keys")

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


def default_key_file(url: str | URL) -> Path | None:
    """The embedded default's key file: beside the SQLite database file of `url`
    (`registry.db` -> `registry.key`); None for PostgreSQL and in-memory SQLite."""
    parsed = make_url(url) if isinstance(url, str) else url
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):  # a URI filename: file:path?mode=...
        database = database[len("file:") :].split("?", 1)[0]
        if not database or database == ":memory:":
            return None
    db = Path(database)
    name = f"{db.stem}.key" if db.suffix != ".key" else f"{db.name}.key"
    return db.with_name(name)


def load_keyring(
    settings: Settings, *, url: str | URL | None = None, generate: bool = True
) -> Keyring:
    """The keyring of this process for the database at `url` (default: the settings' URL; pass
    the engine's own). Raises `MasterKeyError` with the variable to fix. `generate`: allow
    making the embedded default's key file (only ever for a SQLite engine)."""
    previous = [
        MasterKey.parse(k.get_secret_value(), source=f"{PREVIOUS_KEYS_VAR} (key {i})")
        for i, k in enumerate(settings.previous_master_keys, start=1)
    ]
    if settings.master_key is not None:
        active = MasterKey.parse(settings.master_key.get_secret_value(), source=MASTER_KEY_VAR)
        return Keyring(active, previous)
    target = make_url(url if url is not None else settings.database_url)
    is_sqlite = target.get_backend_name() == "sqlite"
    path = settings.master_key_file or default_key_file(target)
    if path is None:
        if is_sqlite and generate:  # in memory: the data lives no longer than this key
            return Keyring(MasterKey.generate(), previous)
        raise MasterKeyError(
            f"{MASTER_KEY_VAR} is not set: set it to a key made with `registry keygen` (or "
            f"{KEY_FILE_VAR} to a file holding one, mode 0600)"
        )
    if not path.exists():
        if not (generate and is_sqlite):
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


def personal_columns(*models: type[object] | Table | None) -> frozenset[str]:
    """Columns of the models marked personal: `mapped_column(..., info={"personal": True})`."""
    found: set[str] = set()
    for model in models:
        if model is None:
            continue
        table = cast(Table, getattr(model, "__table__", model))
        for column in table.columns:
            if column.info.get("personal"):
                found.add(column.key)
        mapper = None if isinstance(model, Table) else inspect(model, raiseerr=False)
        if mapper is not None:  # mapped attribute names, when they differ from the columns'
            for attr in mapper.column_attrs:
                if any(c.info.get("personal") for c in attr.columns):
                    found.add(attr.key)
    return frozenset(found)


def _table_names(sync_conn: Connection) -> set[str]:
    return set(inspect(sync_conn).get_table_names())


async def _verify(engine: AsyncEngine, keyring: Keyring) -> None:
    """`verify` and the database's master key record, on a database whose schema may not
    exist yet (nothing stored: nothing to check; whoever creates the schema records the key
    in the same transaction)."""
    async with engine.connect() as conn:
        tables = await conn.run_sync(_table_names)
    if data_keys.name in tables:  # first: a key that opens no stored data key claims nothing
        await verify(engine, keyring)
    if master_key_record.name in tables:
        async with engine.begin() as conn:
            await claim_master_key(conn, keyring)


@dataclass
class KeyCheck:
    """One engine's record of `enable`: the Crypto checked against its stored keys, and the
    lock that makes concurrent first uses (many adapter writes at once) check once."""

    verified: Crypto | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


KEY_CHECK = Slot("master key check", KeyCheck)


def enabled(engine: AsyncEngine) -> bool:
    """True when `enable` already ran for this engine (its Crypto is attached and checked)."""
    crypto = crypto_of(engine)
    return crypto is not None and scope_of(engine).get(KEY_CHECK).verified is crypto


async def enable(
    engine: AsyncEngine, settings: Settings, *models: type[object] | Table | None
) -> Crypto:
    """Seal personal data on `engine` from now on: the keyring from settings, the personal
    columns of `models` plus `REGISTRY_PERSONAL_FIELDS`, checked against the stored data keys
    (`events.crypto.verify`), then attached. Call it once the schema exists and before anything
    is written. A Crypto the app attached itself is kept (and checked). Entry points reach it
    through the composition root (`registry.bootstrap.Container.encrypt`).

    Idempotent per engine. Raises `MasterKeyError` (wrong or missing key: nothing written)."""
    columns = personal_columns(*models) | frozenset(settings.personal_fields)
    check = scope_of(engine).get(KEY_CHECK)
    async with check.lock:
        crypto = crypto_of(engine)
        if crypto is None:
            keyring = load_keyring(settings, url=engine.url)
            await _verify(engine, keyring)
            crypto = Crypto(keyring, columns)
            attach(engine, crypto)
        elif check.verified is not crypto:
            await _verify(engine, crypto.keyring)
        crypto.mark_personal(columns)
        check.verified = crypto
        return crypto


__all__ = [
    "MasterKeyError",
    "default_key_file",
    "enable",
    "enabled",
    "load_keyring",
    "personal_columns",
    "read_key_file",
    "write_key_file",
]
