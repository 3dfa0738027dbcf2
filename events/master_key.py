"""Which master key a database belongs to: its fingerprint is recorded in the
`event_master_key` table in the transaction that creates the schema, and any other key is
refused before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.claims import taking, took
from events.keyring import Keyring, MasterKeyError
from events.tables import data_keys, master_key_record

_RECORD_KEY = taking(master_key_record, master_key_record.c.id)


def _wrong_key(recorded: str, keyring: Keyring) -> MasterKeyError:
    return MasterKeyError(
        f"this database belongs to master key {recorded}, this process has "
        f"{', '.join(sorted(keyring.key_ids))}: nothing was written (check REGISTRY_MASTER_KEY "
        "or the key file beside the SQLite database; during a rotation put the old key in "
        "REGISTRY_PREVIOUS_MASTER_KEYS)"
    )


async def recorded_master_key(conn: AsyncConnection) -> str | None:
    """The key_id of the master key the database belongs to, or None before it is recorded."""
    found = await conn.scalar(select(master_key_record.c.key_id).where(master_key_record.c.id == 1))
    return str(found) if found is not None else None


async def claim_master_key(conn: AsyncConnection, keyring: Keyring) -> None:
    """In `conn`'s transaction: record `keyring.active` as the database's master key when none
    is recorded yet (the first process wins a race), then refuse (`MasterKeyError`) a keyring
    that lacks the recorded key. The caller rolls back on the error: nothing is written."""
    recorded = await recorded_master_key(conn)
    if recorded is None:
        row = {"id": 1, "key_id": keyring.active.key_id, "recorded_at": datetime.now(UTC)}
        if not await took(conn, _RECORD_KEY, row):  # another process recorded one first
            recorded = await recorded_master_key(conn)
        else:
            recorded = keyring.active.key_id
    if recorded not in keyring.key_ids:
        raise _wrong_key(str(recorded), keyring)


async def record_master_key(conn: AsyncConnection, key_id: str) -> None:
    """Move the database's recorded master key to `key_id` (a rotation has re-wrapped every
    data key with it)."""
    await conn.execute(
        update(master_key_record)
        .where(master_key_record.c.id == 1)
        .values(key_id=key_id, recorded_at=datetime.now(UTC))
    )


async def verify(engine: AsyncEngine, keyring: Keyring) -> None:
    """Refuse to start when the database belongs to another master key, or a stored data key is
    wrapped by a master key this process does not have (a wrong or missing key): raises
    `MasterKeyError`, writes nothing."""
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                select(data_keys.c.master_key_id)
                .where(data_keys.c.master_key_id.is_not(None))
                .group_by(data_keys.c.master_key_id)
            )
        ).scalars()
        unknown = sorted(set(found) - keyring.key_ids)
        if unknown:
            raise MasterKeyError(
                "the configured master key does not match the data keys in the database: they "
                f"are wrapped by master key {', '.join(unknown)}, this process has "
                f"{', '.join(sorted(keyring.key_ids))} (check REGISTRY_MASTER_KEY; during a "
                "rotation put the old key in REGISTRY_PREVIOUS_MASTER_KEYS)"
            )
        # a fingerprint match is a key match; open one key per master key to be sure
        for key_id in keyring.key_ids:
            row = (
                await conn.execute(
                    select(data_keys.c.stream_id, data_keys.c.wrapped_key)
                    .where(data_keys.c.master_key_id == key_id)
                    .limit(1)
                )
            ).first()
            if row is not None:
                keyring.unwrap(row.stream_id, key_id, bytes(row.wrapped_key))


__all__ = ["claim_master_key", "record_master_key", "recorded_master_key", "verify"]
