"""Master keys: the key-encryption keys that wrap each stream's data key, and the keyring of
the active key (wraps new data keys) and previous ones (still unwrap them, during a rotation).
A master key never touches the database; only its id (a fingerprint) is stored."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.errors import EventStoreError

NONCE_BYTES = 12


class MasterKeyError(EventStoreError):
    """The master key is missing, malformed, or not the one that wrapped the data keys."""


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit key-encryption key. `key_id` (a fingerprint) is all the database sees of it."""

    secret: bytes
    key_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise MasterKeyError("a master key is 32 bytes")
        fingerprint = hashlib.sha256(b"registry-master-key\x00" + self.secret).hexdigest()[:16]
        object.__setattr__(self, "key_id", fingerprint)

    def __repr__(self) -> str:  # never print the secret
        return f"MasterKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str, *, source: str = "REGISTRY_MASTER_KEY") -> MasterKey:
        """A key from its text form: 32 bytes in URL-safe base64 (what `encoded()` gives)."""
        cleaned = text.strip()
        try:
            raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (ValueError, TypeError):
            raw = b""
        if len(raw) != 32:
            raise MasterKeyError(
                f"{source} is not a master key: expected 32 bytes in URL-safe base64 "
                "(make one with `registry keygen`)"
            )
        return cls(raw)

    def encoded(self) -> str:
        return base64.urlsafe_b64encode(self.secret).decode("ascii").rstrip("=")


def _key_aad(stream_id: UUID) -> bytes:
    return b"registry-data-key\x00" + stream_id.bytes


class Keyring:
    """The active master key (wraps new data keys) and previous ones (still unwrap, during a
    rotation)."""

    def __init__(self, active: MasterKey, previous: Iterable[MasterKey] = ()) -> None:
        self.active = active
        self.keys = {k.key_id: k for k in (*previous, active)}
        self._aead = {k.key_id: AESGCM(k.secret) for k in self.keys.values()}

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self.keys)

    def wrap(self, stream_id: UUID, data_key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = self._aead[self.active.key_id].encrypt(nonce, data_key, _key_aad(stream_id))
        return self.active.key_id, nonce + wrapped

    def unwrap(self, stream_id: UUID, key_id: str, wrapped: bytes) -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise MasterKeyError(
                f"the data key of stream {stream_id} is wrapped by master key {key_id}, which "
                "is not configured (REGISTRY_MASTER_KEY, REGISTRY_PREVIOUS_MASTER_KEYS)"
            )
        try:
            return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _key_aad(stream_id))
        except InvalidTag:
            raise MasterKeyError(
                f"the data key of stream {stream_id} does not open with master key {key_id}"
            ) from None


__all__ = ["NONCE_BYTES", "Keyring", "MasterKey", "MasterKeyError"]
