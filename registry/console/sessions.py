"""Console sessions: a bearer token (the API's) exchanged for a random session id kept in
this process's memory, carried by an HttpOnly, SameSite=Strict cookie; each session has its
own CSRF token, which every request that changes anything must send back."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "registry_console"
#: a session ends this long after sign-in, seconds
SESSION_SECONDS = 8 * 3600
#: sessions kept at most; signing in beyond it ends the oldest
MAX_SESSIONS = 10_000


def fingerprint(token: str) -> str:
    """A short, non-reversible name of a token, for the record of who did what."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _key(session_id: str) -> str:
    # the table is keyed by a digest: the raw id is a bearer secret, not kept around
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    csrf: str
    #: fingerprint of the token signed in with
    who: str
    expires: float

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """The live console sessions of this process (a restart signs everyone out)."""

    def __init__(self, lifetime: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._live: OrderedDict[str, Session] = OrderedDict()

    def open(self, token: str) -> tuple[str, Session]:
        """A new session for someone who gave `token` (already checked); its id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        session = Session(
            csrf=secrets.token_urlsafe(32),
            who=fingerprint(token),
            expires=time.monotonic() + self.lifetime,
        )
        self._live[_key(session_id)] = session
        while len(self._live) > self.limit:
            self._live.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _key(session_id)
        session = self._live.get(key)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            del self._live[key]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._live.pop(_key(session_id), None)
