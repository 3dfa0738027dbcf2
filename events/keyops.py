"""Operations over every data key or every event: master-key rotation and the migration of
events stored before encryption.

Both work online, in batches that each commit on their own: running processes keep reading and
writing meanwhile, and a run that stops (crash, Ctrl+C) is resumed by running it again. Neither
ever writes a personal value in clear.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import EVENT_TYPES
from events.claims import taking
from events.crypto import Crypto
from events.errors import EventStoreError
from events.keyring import Keyring
from events.master_key import record_master_key, verify
from events.tables import data_keys, events

#: called after each committed batch with (done, total)
OnProgress = Callable[[int, int], None]
#: attempts of one batch that lost a race with a live writer (a data key made meanwhile)
BATCH_ATTEMPTS = 5
#: new data key rows, skipping (and not returning) those another writer stored meanwhile: a
#: lost race is an answer, not a failed statement (see `events.statements.sqlite_guarded_insert`)
_INSERT_KEYS = taking(data_keys, data_keys.c.stream_id)


class _KeyRaced(EventStoreError):
    """A live writer gave one of the batch's streams a data key first: redo the batch."""

    def __init__(self) -> None:
        super().__init__(
            "live writers kept giving this batch's streams data keys first; run it again"
        )


# ---------------------------------------------------------------------------- rotation
@dataclass(frozen=True)
class Rotation:
    """What `rotate` did: data keys re-wrapped with the active master key `key_id`."""

    key_id: str
    rewrapped: int
    total: int


def _not_active(keyring: Keyring) -> ColumnElement[bool]:
    return data_keys.c.master_key_id.is_not(None) & (
        data_keys.c.master_key_id != keyring.active.key_id
    )


async def keys_to_rotate(engine: AsyncEngine, keyring: Keyring) -> int:
    """How many data keys are wrapped by a master key other than the active one."""
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.count()).select_from(data_keys).where(_not_active(keyring))
        )
    return int(found or 0)


_REWRAP = (
    update(data_keys)
    .where(
        data_keys.c.stream_id == bindparam("sid"),
        # unchanged since read: a key erased meanwhile stays erased
        data_keys.c.master_key_id == bindparam("old_id"),
    )
    .values(master_key_id=bindparam("new_id"), wrapped_key=bindparam("wrapped"))
)


async def rotate(
    engine: AsyncEngine,
    keyring: Keyring,
    *,
    batch_size: int = 1000,
    on_progress: OnProgress | None = None,
) -> Rotation:
    """Re-wrap every data key not wrapped by `keyring.active` with it, `batch_size` keys per
    transaction. The old master keys must be in `keyring` (previous keys). Processes that
    have both keys keep working throughout; once it is done the old keys can be dropped.

    Raises `MasterKeyError` (before changing anything) when a data key is wrapped by a master
    key the keyring lacks."""
    await verify(engine, keyring)
    total = await keys_to_rotate(engine, keyring)
    done = 0
    after: uuid.UUID | None = None
    while True:
        async with engine.begin() as conn:
            query = (
                select(data_keys.c.stream_id, data_keys.c.master_key_id, data_keys.c.wrapped_key)
                .where(_not_active(keyring))
                .order_by(data_keys.c.stream_id)
                .limit(batch_size)
            )
            if after is not None:
                query = query.where(data_keys.c.stream_id > after)
            rows = (await conn.execute(query)).all()
            if not rows:
                break
            params = []
            for row in rows:
                raw = keyring.unwrap(row.stream_id, row.master_key_id, bytes(row.wrapped_key))
                new_id, wrapped = keyring.wrap(row.stream_id, raw)
                params.append(
                    {"sid": row.stream_id, "old_id": row.master_key_id, "new_id": new_id,
                     "wrapped": wrapped}
                )  # fmt: skip
            await conn.execute(_REWRAP, params)
            after = rows[-1].stream_id
        done += len(rows)
        if on_progress is not None:
            on_progress(done, max(total, done))
    # every data key is wrapped by the active key now: the database belongs to it
    async with engine.begin() as conn:
        await record_master_key(conn, keyring.active.key_id)
    return Rotation(key_id=keyring.active.key_id, rewrapped=done, total=max(total, done))


# ---------------------------------------------------------------------------- migration
@dataclass(frozen=True)
class Migration:
    """What `encrypt_events` did."""

    #: events whose personal values were sealed
    sealed: int
    #: data keys created for streams that had none
    keys_created: int
    #: events skipped because their stream was erased (its personal values are gone already)
    skipped_erased: int
    #: events stored in clear that were looked at (those without personal values included)
    scanned: int


async def events_in_clear(engine: AsyncEngine) -> int:
    """How many stored events have no sealed part (personal or not)."""
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.count()).select_from(events).where(events.c.sealed.is_(None))
        )
    return int(found or 0)


_SEAL = (
    update(events)
    .where(events.c.position == bindparam("pos"), events.c.sealed.is_(None))
    .values(data=bindparam("clear"), sealed=bindparam("secret"))
)


async def _seal_batch(
    conn: AsyncConnection, crypto: Crypto, rows: Sequence[Any], made: list[uuid.UUID]
) -> tuple[int, int]:
    """Seal the personal rows of one batch in the caller's transaction: (sealed, skipped)."""
    personal = [
        r
        for r in rows
        if r.event_type in EVENT_TYPES and crypto.split(r.event_type, r.data)[1] is not None
    ]
    if not personal:
        return 0, 0
    streams = sorted({r.stream_id for r in personal})
    # lock the key rows: an erasure of one of these streams waits for this batch
    stored = {
        k.stream_id: k
        for k in (
            await conn.execute(
                select(data_keys.c.stream_id, data_keys.c.master_key_id, data_keys.c.wrapped_key)
                .where(data_keys.c.stream_id.in_(streams))
                .with_for_update()
            )
        ).all()
    }
    keys = {}
    new_rows = []
    for sid in streams:
        row = stored.get(sid)
        if row is None:
            keys[sid], key_row = crypto.new_key(sid)
            new_rows.append(key_row)
            made.append(sid)
        elif row.wrapped_key is not None:
            keys[sid] = crypto.key_from_row(sid, row.master_key_id, row.wrapped_key)
    if new_rows:
        stored_now = await conn.execute(_INSERT_KEYS[conn.dialect.name], new_rows)
        if len(stored_now.all()) != len(new_rows):
            raise _KeyRaced()
    params = []
    skipped = 0
    for r in personal:
        key = keys.get(r.stream_id)
        if key is None:  # erased stream
            skipped += 1
            continue
        clear, secret = crypto.seal(key, r.stream_id, r.stream_version, r.event_type, r.data)
        params.append({"pos": r.position, "clear": clear, "secret": secret})
    if params:
        await conn.execute(_SEAL, params)
    return len(params), skipped


async def encrypt_events(
    engine: AsyncEngine,
    crypto: Crypto,
    *,
    batch_size: int = 1000,
    on_progress: OnProgress | None = None,
) -> Migration:
    """Bring events stored before encryption under it: in batches of `batch_size` events (one
    transaction each), give each stream without a data key one, and seal the personal values
    of its clear events in place (`data` keeps "[erased]" placeholders, `sealed` the values).
    Erased streams are skipped. Idempotent: a second run finds nothing to do; an interrupted
    one resumes. `crypto` must be checked against the stored keys (`verify`) first."""
    total = await events_in_clear(engine)
    sealed = skipped = scanned = created = 0
    after = 0
    while True:
        query = (
            select(
                events.c.position,
                events.c.stream_id,
                events.c.stream_version,
                events.c.event_type,
                events.c.data,
            )
            .where(events.c.sealed.is_(None), events.c.position > after)
            .order_by(events.c.position)
            .limit(batch_size)
        )
        for attempt in range(BATCH_ATTEMPTS):
            made: list[uuid.UUID] = []
            try:
                async with engine.begin() as conn:
                    rows = (await conn.execute(query)).all()
                    n_sealed, n_skipped = await _seal_batch(conn, crypto, rows, made)
                break
            except (_KeyRaced, OperationalError):
                # a live writer made one of these data keys first (or SQLite was busy): the
                # batch rolled back whole; forget the keys it made and do it again
                for sid in made:
                    crypto.forget(sid)
                if attempt == BATCH_ATTEMPTS - 1:
                    raise
            except BaseException:
                for sid in made:
                    crypto.forget(sid)
                raise
        if not rows:
            break
        after = rows[-1].position
        sealed += n_sealed
        skipped += n_skipped
        created += len(made)
        scanned += len(rows)
        if on_progress is not None:
            on_progress(scanned, max(total, scanned))
    return Migration(sealed=sealed, keys_created=created, skipped_erased=skipped, scanned=scanned)


__all__ = [
    "Migration",
    "Rotation",
    "encrypt_events",
    "events_in_clear",
    "keys_to_rotate",
    "rotate",
]
