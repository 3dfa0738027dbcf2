"""Bearer-token authentication: `Authorization: Bearer <token>`, compared in constant time."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from pathlib import Path

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry.api.errors import ApiProblem

bearer = HTTPBearer(
    auto_error=False,
    description="A token from REGISTRY_API_TOKENS (or the one `registry serve` generated).",
)


def token_matches(given: str, tokens: Sequence[str]) -> bool:
    """True when `given` equals one of `tokens`. Every token is compared (no early exit)."""
    given_b = given.encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given_b, token.encode())
    return found


class BearerAuth:
    """A FastAPI dependency that refuses a request without one of `tokens` (401)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tuple(t for t in tokens if t)

    async def __call__(
        self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> None:
        if credentials is None or not token_matches(credentials.credentials, self.tokens):
            raise ApiProblem(
                401,
                "UNAUTHORIZED",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token kept in `path`, or a new one written there with mode 0600.

    Returns (token, created). A file readable by others is tightened to 0600.
    """
    if path.exists():
        token = path.read_text().strip()
        if token:
            path.chmod(0o600)
            return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = tmp.open("x")  # created fresh, then narrowed before the secret is written
    try:
        tmp.chmod(0o600)
        fd.write(token + "\n")
    finally:
        fd.close()
    tmp.replace(path)
    return token, True
