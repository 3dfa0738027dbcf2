"""A user with every kind of personal data, and a scan of every table for any of it in clear."""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass, field

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.domain.commands import (
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)
from registry.service.handlers import CommandHandlers

#: the app's custom column marked personal (sealed, and shredded with the rest)
PERSONAL_COLUMN = "nickname"


class FastHasher:
    """Stands in for Argon2 (the hash itself is not under test); a recognisable output."""

    def hash(self, password: str) -> str:
        return "$fakehash$" + password[::-1]


@dataclass
class Victim:
    """A user with every kind of personal data, and the values to look for."""

    user_id: uuid.UUID
    needles: list[str] = field(default_factory=list)


async def full_life(h: CommandHandlers, tag: str) -> Victim:
    """Register, change email, set a password, link and update an OAuth account."""
    first = f"first.{tag}@example.com"  # canonical: the needle is what is stored
    second = f"second.{tag}@example.org"
    reg = await h.handle(
        RegisterUser.model_validate(
            {
                "email": first,
                "password": f"pw-one-{tag}",
                "profile": {PERSONAL_COLUMN: f"Nick-{tag}", "plan": "gold"},
                "command_id": f"reg-{tag}",
            }
        )
    )
    uid = reg.user_id
    await h.handle(UpdateUser(user_id=uid, email=second, command_id=f"mail-{tag}"))
    await h.handle(UpdateUser.model_validate({"user_id": uid, "password": f"pw-two-{tag}"}))
    account = uuid.uuid4()
    await h.handle(
        LinkOAuthAccount.model_validate(
            {
                "user_id": uid,
                "oauth_account_id": account,
                "oauth_name": "github",
                "access_token": f"gho-access-{tag}",
                "refresh_token": f"ghr-refresh-{tag}",
                "account_id": f"gh-account-{tag}",
                "account_email": f"oauth.{tag}@example.net",
            }
        )
    )
    await h.handle(
        UpdateOAuthAccount.model_validate(
            {"user_id": uid, "oauth_account_id": account, "access_token": f"ya29-new-{tag}"}
        )
    )
    hasher = FastHasher()
    return Victim(
        uid,
        [
            first,
            second,
            hasher.hash(f"pw-one-{tag}"),
            hasher.hash(f"pw-two-{tag}"),
            f"pw-one-{tag}",
            f"pw-two-{tag}",
            f"Nick-{tag}",
            f"gho-access-{tag}",
            f"ghr-refresh-{tag}",
            f"ya29-new-{tag}",
            f"gh-account-{tag}",
            f"oauth.{tag}@example.net",
        ],
    )


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return raw.decode("latin-1")  # a clear value in bytes shows up byte for byte
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


async def dump_every_table(engine: AsyncEngine) -> dict[str, str]:
    """Every table in the database (reflected: whatever metadata made it), as raw text."""
    reflected = MetaData()
    async with engine.connect() as conn:
        with warnings.catch_warnings():  # expression indexes are not reflected: no matter
            warnings.simplefilter("ignore")
            await conn.run_sync(reflected.reflect)
        out: dict[str, str] = {}
        for table in reflected.sorted_tables:
            rows = (await conn.execute(select(table))).all()
            out[table.name] = "\n".join(" | ".join(_text(v) for v in row) for row in rows)
    return out


def assert_nowhere(dump: dict[str, str], needles: list[str]) -> None:
    for name, content in dump.items():
        lowered = content.lower()
        for needle in needles:
            assert needle.lower() not in lowered, f"{needle!r} is still in table {name}"
