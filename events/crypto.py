"""Personal data in an immutable log: per-user encryption and erasure (crypto-shredding).

Each user (stream) gets a random 256-bit data key the first time one of its events is sealed.
The key is stored in `event_data_keys`, wrapped (AES-GCM) by a master key that never touches
the database; only the master key's id (a fingerprint) is stored beside it. An event's personal
fields (`Event.personal_fields`, the always-personal keys of its `personal_dict`, and the app's
custom columns marked personal) are moved out of its JSON payload into one AES-GCM ciphertext
in the `sealed` column; the payload keeps `"[erased]"` in their place. So the stored payload
is already what remains once the user is erased: erasing destroys the data key (in the same
transaction as the `UserErased` event), and every sealed field is unreadable from then on.

Ciphertexts are bound to their place in the log (associated data: stream id and version), data
keys to their stream. Reading joins each event to its stream's key row: a key marked erased
makes every event of that stream read as erased (`RecordedEvent.erased`).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import EVENT_TYPES
from events.codec import loads
from events.envelope import shard_of
from events.errors import InvalidEventError
from events.keyring import NONCE_BYTES, Keyring, MasterKey, MasterKeyError
from events.master_key import claim_master_key, record_master_key, recorded_master_key, verify
from events.scope import scope_of
from events.tables import data_keys, events

#: what a personal field reads as once its key is gone (and what the stored payload holds)
ERASED = "[erased]"
#: the format byte that starts every sealed value
SEAL_FORMAT = b"\x01"
#: where the ciphertext starts in a sealed value (format byte, nonce)
SEALED_AT = 1 + NONCE_BYTES
KEY_CACHE_SIZE = 50_000
#: personal fields of stored payloads older than the current models (upcast after opening)
LEGACY_PERSONAL: dict[str, frozenset[str]] = {"UserRegistered": frozenset({"password_hash"})}
#: events whose `personal_dict` holds the app's custom columns (the app's personal ones sealed)
PROFILE_EVENTS = frozenset({"UserRegistered", "UserProfileUpdated"})


class StreamErasedError(InvalidEventError):
    """The stream's data key was destroyed: nothing more can be written to it."""

    def __init__(self, stream_id: UUID) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id} was erased: nothing can be appended to it")


# ---------------------------------------------------------------------------- sealing
#: the JSON encoder of sealed values, bound once (json.dumps re-creates it per call); they
#: are decoded with `events.codec.loads`
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _event_aad(stream_id: UUID, stream_version: int) -> bytes:
    return stream_id.bytes + stream_version.to_bytes(4, "big")


def _clear(value: object) -> str | None:
    return None if value is None else ERASED


#: what of an event type is personal: top-level fields, the dict field whose keys may be, and
#: which of its keys are
_Spec = tuple[frozenset[str], str | None, frozenset[str]]


def personal_spec(personal_profile: frozenset[str]) -> dict[str, _Spec]:
    """Every event type's personal parts, with the app's personal profile columns."""
    return {
        name: (
            cls.personal_fields | LEGACY_PERSONAL.get(name, frozenset()),
            cls.personal_dict,
            cls.personal_keys | (personal_profile if name in PROFILE_EVENTS else frozenset()),
        )
        for name, cls in EVENT_TYPES.items()
    }


def split_personal(
    spec: _Spec, data: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """See `Crypto.split`."""
    fields, nested, keys = spec
    clear = dict(data)
    secret: dict[str, Any] = {}
    for name in fields:
        if name in clear and clear[name] is not None:
            secret[name] = clear[name]
            clear[name] = ERASED
    if nested is not None and keys:
        inner = clear.get(nested)
        if isinstance(inner, dict):
            hidden = {k: v for k, v in inner.items() if k in keys and v is not None}
            if hidden:
                secret[nested] = hidden
                clear[nested] = {k: (_clear(v) if k in keys else v) for k, v in inner.items()}
    return clear, (secret or None)


def merge_opened(data: dict[str, Any], opened: Mapping[str, Any]) -> None:
    """Put the opened personal values back into the stored payload `data` (in place): a
    nested dict (the profile's personal keys) goes into the stored one."""
    for name, value in opened.items():
        if type(value) is dict:
            inner = data.get(name)
            if type(inner) is dict:
                data[name] = {**inner, **value}
                continue
        data[name] = value


class Crypto:
    """Seals and opens event payloads, and keeps the data keys (one per engine, see `attach`).

    `personal_profile`: the app's custom columns that hold personal data; their values in
    `profile` (UserRegistered) and `changes` (UserProfileUpdated) are sealed too.
    """

    def __init__(self, keyring: Keyring, personal_profile: Iterable[str] = ()) -> None:
        self.keyring = keyring
        self.personal_profile = frozenset(personal_profile)
        #: unwrapped keys by stream, with the wrapped bytes they came from (a re-wrapped or
        #: destroyed key row never matches a stale entry)
        #: (first in, first out: a hit costs one lookup, no reordering; an OrderedDict drops
        #: its oldest entry in constant time, where a dict's first entry is found by skipping
        #: every slot deleted before it)
        self._keys: OrderedDict[UUID, tuple[bytes, AESGCM]] = OrderedDict()
        self._spec = personal_spec(self.personal_profile)

    def mark_personal(self, columns: Iterable[str]) -> None:
        """Also seal these custom columns (an app model's columns marked personal)."""
        more = frozenset(columns) - self.personal_profile
        if more:
            self.personal_profile |= more
            self._spec = personal_spec(self.personal_profile)

    def personal(self, event_type: str) -> bool:
        spec = self._spec.get(event_type)
        return spec is not None and bool(spec[0] or spec[2])

    def split(
        self, event_type: str, data: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the payload with personal values replaced by "[erased]", the personal values)
        — the second is None when the payload holds nothing personal."""
        return split_personal(self._spec[event_type], data)

    def seal(
        self, key: AESGCM, stream_id: UUID, version: int, event_type: str, data: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bytes | None]:
        """The payload to store and its sealed personal values (None: nothing personal)."""
        clear, secret = self.split(event_type, data)
        if secret is None:
            return clear, None
        nonce = os.urandom(NONCE_BYTES)
        plain = _encode(secret).encode()
        return clear, SEAL_FORMAT + nonce + key.encrypt(
            nonce, plain, _event_aad(stream_id, version)
        )

    @staticmethod
    def open(
        key: AESGCM,
        stream_id: UUID,
        version: int,
        data: Mapping[str, Any],
        sealed: bytes,
        *,
        stream_bytes: bytes | None = None,
        in_place: bool = False,
    ) -> dict[str, Any]:
        """The stored payload with its sealed values put back. A caller opening many events
        may pass the stream id's bytes, and `in_place` for a payload it owns (a row just
        decoded) to have it filled instead of copied."""
        if sealed[:1] != SEAL_FORMAT:
            raise MasterKeyError(f"stream {stream_id} v{version}: unknown sealed format")
        aad = (stream_bytes or stream_id.bytes) + version.to_bytes(4, "big")
        try:
            plain = key.decrypt(sealed[1:SEALED_AT], sealed[SEALED_AT:], aad)
        except InvalidTag:
            raise MasterKeyError(
                f"stream {stream_id} v{version}: sealed data does not open with its data key"
            ) from None
        out = data if in_place and type(data) is dict else dict(data)
        merge_opened(out, loads(plain))
        return out

    # ------------------------------------------------------------------ data keys
    def key_from_row(
        self, stream_id: UUID, key_id: str, wrapped: bytes, *, remember: bool = True
    ) -> AESGCM:
        """The stream's data key from its stored row (unwrapped once, then cached). A reader
        passing over every stream once (a replay) keeps its keys itself: `remember=False`
        leaves the cache to the streams being written."""
        if not isinstance(wrapped, bytes):
            wrapped = bytes(wrapped)
        found = self._keys.get(stream_id)
        if found is not None and found[0] == wrapped:
            return found[1]
        key = AESGCM(self.keyring.unwrap(stream_id, key_id, wrapped))
        if remember:
            self._remember(stream_id, wrapped, key)
        return key

    def _remember(self, stream_id: UUID, wrapped: bytes, key: AESGCM) -> None:
        self._keys.pop(stream_id, None)
        self._keys[stream_id] = (wrapped, key)
        if len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)

    def cached(self, stream_id: UUID) -> AESGCM | None:
        found = self._keys.get(stream_id)
        return None if found is None else found[1]

    def new_key(self, stream_id: UUID) -> tuple[AESGCM, dict[str, Any]]:
        """A fresh data key for a stream and the row that stores it (insert it with the
        stream's first sealed event)."""
        raw = AESGCM.generate_key(bit_length=256)
        key_id, wrapped = self.keyring.wrap(stream_id, raw)
        key = AESGCM(raw)
        self._remember(stream_id, wrapped, key)
        row = {
            "stream_id": stream_id,
            "shard": shard_of(stream_id),
            "master_key_id": key_id,
            "wrapped_key": wrapped,
            "created_at": datetime.now(UTC),
            "erased_at": None,
        }
        return key, row

    async def stored_key(self, conn: AsyncConnection, stream_id: UUID) -> AESGCM | None:
        """The stream's data key from the database; None when it has none yet. Raises
        `StreamErasedError` when it was destroyed."""
        row = (await conn.execute(_STORED_KEY, {"sid": stream_id})).first()
        if row is None:
            return None
        if row.wrapped_key is None:
            raise StreamErasedError(stream_id)
        return self.key_from_row(stream_id, row.master_key_id, row.wrapped_key)

    def forget(self, stream_id: UUID) -> None:
        self._keys.pop(stream_id, None)


#: one stream's key row (built once: a statement built per call costs more than the query)
_STORED_KEY = select(data_keys.c.master_key_id, data_keys.c.wrapped_key).where(
    data_keys.c.stream_id == bindparam("sid", type_=data_keys.c.stream_id.type)
)


# ---------------------------------------------------------------------------- per engine
def attach(engine: AsyncEngine, crypto: Crypto | None) -> None:
    """Make every `EventStore` on `engine` seal and open with `crypto` (None: detach)."""
    scope_of(engine).crypto = crypto


def crypto_of(engine: AsyncEngine) -> Crypto | None:
    return scope_of(engine).crypto


# ---------------------------------------------------------------------------- erasure
async def shred(conn: AsyncConnection, crypto: Crypto | None, stream_id: UUID) -> None:
    """Destroy a stream's data key, in the caller's transaction (with its `UserErased`).

    The key row stays as a marker (no key material, `erased_at` set), so every event of the
    stream reads as erased. Events stored in clear (before encryption was on, or by a store
    without a key) have their personal values overwritten with "[erased]" here too."""
    now = datetime.now(UTC)
    done = await conn.execute(
        update(data_keys)
        .where(data_keys.c.stream_id == stream_id)
        .values(master_key_id=None, wrapped_key=None, erased_at=now)
    )
    if not done.rowcount:
        await conn.execute(
            insert(data_keys).values(
                stream_id=stream_id,
                shard=shard_of(stream_id),
                master_key_id=None,
                wrapped_key=None,
                created_at=now,
                erased_at=now,
            )
        )
    if crypto is not None:
        crypto.forget(stream_id)
    spec = personal_spec(crypto.personal_profile if crypto is not None else frozenset())
    rows = (
        await conn.execute(
            select(events.c.position, events.c.event_type, events.c.data).where(
                events.c.stream_id == stream_id, events.c.sealed.is_(None)
            )
        )
    ).all()
    for row in rows:
        if row.event_type not in EVENT_TYPES:
            continue
        clear, secret = split_personal(spec[row.event_type], row.data)
        if secret is not None:
            await conn.execute(
                update(events).where(events.c.position == row.position).values(data=clear)
            )


__all__ = [
    "ERASED",
    "Crypto",
    "Keyring",
    "MasterKey",
    "MasterKeyError",
    "StreamErasedError",
    "attach",
    "claim_master_key",
    "crypto_of",
    "record_master_key",
    "recorded_master_key",
    "shred",
    "verify",
]
