"""The replay's fold: stored rows into `StreamChange`s without building event models.

Every event goes through the projection's `Folder`, as a live batch does; the events a replay
meets most (a registration opening a stream, an event setting one column of a row still to be
inserted: `folding.PUTS`) take a shorter way to the same result, every other case the
general `Folder.apply`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events import EVENT_TYPES
from events.codec import loads
from events.crypto import SEAL_FORMAT, SEALED_AT, Crypto, merge_opened
from events.keyring import MasterKeyError
from events.statements import no_master_key
from events.upcasting import upcast
from projections.folding import PUTS, REGISTERED, Folder, StreamChange
from projections.replay_reads import KeyRow

CURRENT_VERSIONS = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}


def fold_rows(
    folder: Folder,
    changes: dict[uuid.UUID, StreamChange],
    rows: Iterable[Sequence[Any]],
    crypto: Crypto | None = None,
    keys: Mapping[uuid.UUID, KeyRow] | None = None,
) -> int:
    """See `UserProjection.fold_rows`."""
    apply = folder.apply
    registered = folder.registered
    puts = PUTS
    current = CURRENT_VERSIONS
    stored = keys or {}
    #: this call's data keys, unwrapped: (key, the stream id's bytes for the associated data)
    opened: dict[uuid.UUID, tuple[AESGCM, bytes]] = {}
    n = 0
    for (
        position,
        _,
        sid,
        version,
        event_type,
        schema_version,
        data,
        recorded_at,
        sealed,
    ) in rows:
        n += 1
        change = changes.get(sid)
        if change is None:
            change = changes[sid] = StreamChange(sid)
        data = loads(data)
        row = stored.get(sid)
        erased = row is not None and row[2] is not None
        if sealed is not None and not erased:
            found = opened.get(sid)
            if found is None:
                found = opened[sid] = _key(crypto, sid, row, position)
            data = _open(found, sid, version, data, sealed)
        if schema_version != current[event_type]:
            data = upcast(event_type, schema_version, data)
        if not erased and version > change.version:
            insert = change.insert
            if insert is not None:
                # the row is still to be inserted (registered in this replay)
                put = puts.get(event_type)
                if put is not None:
                    column, field, value = put
                    if field is None:
                        insert[column] = value
                    elif value is None:
                        insert[column] = data[field]
                    else:
                        insert[column] = value(data[field])
                    insert["version"] = version
                    insert["updated_at"] = recorded_at
                    change.version = version
                    change.applied += 1
                    continue
            elif event_type == REGISTERED and not (change.in_db or change.deleted):
                # a new stream's first row
                registered(change, data, version)
                insert = cast(dict[str, Any], change.insert)
                insert["created_at"] = recorded_at
                insert["version"] = version
                insert["updated_at"] = recorded_at
                change.version = version
                change.applied += 1
                continue
        apply(change, version, event_type, data, recorded_at, erased)
    return n


def _key(
    crypto: Crypto | None, sid: uuid.UUID, row: KeyRow | None, position: int
) -> tuple[AESGCM, bytes]:
    """The stream's data key, unwrapped, and its id's bytes (the associated data's start)."""
    if crypto is None:
        raise no_master_key(position)
    if row is None:
        raise MasterKeyError(f"the event at position {position} has no data key")
    # a key row not erased holds its key's id and the wrapped key; the replay keeps the keys
    # it unwraps to itself (`remember=False`): it passes over every stream once
    key = crypto.key_from_row(sid, cast(str, row[0]), cast(bytes, row[1]), remember=False)
    return key, sid.bytes


def _open(
    found: tuple[AESGCM, bytes],
    sid: uuid.UUID,
    version: int,
    data: Mapping[str, Any],
    sealed: bytes,
) -> dict[str, Any]:
    """The decoded payload `data` with its sealed values put back (`Crypto.open`, with the
    key and the stream's bytes at hand)."""
    if sealed[:1] != SEAL_FORMAT:
        raise MasterKeyError(f"stream {sid} v{version}: unknown sealed format")
    try:
        plain = found[0].decrypt(
            sealed[1:SEALED_AT], sealed[SEALED_AT:], found[1] + version.to_bytes(4, "big")
        )
    except InvalidTag:
        raise MasterKeyError(
            f"stream {sid} v{version}: sealed data does not open with its data key"
        ) from None
    out = data if type(data) is dict else dict(data)
    for name, value in loads(plain).items():
        if type(value) is dict:  # a profile's personal keys: `merge_opened`
            merge_opened(out, {name: value})
        else:
            out[name] = value
    return out


__all__ = ["CURRENT_VERSIONS", "fold_rows"]
