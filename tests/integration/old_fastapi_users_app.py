"""An existing FastAPI Users app's database, written by fastapi-users-db-sqlalchemy itself.

Run by test_import_users.py with the interpreter of a separate environment that has
fastapi-users-db-sqlalchemy installed (it pins SQLAlchemy < 2.1; see tests/support/upstream.py),
never imported by the test process:

    python old_fastapi_users_app.py write DATABASE_URL
        create the tables and the users of SPECS through SQLAlchemyUserDatabase; prints them
        as JSON (ids, emails, plaintext passwords, profile, linked OAuth accounts)
    python old_fastapi_users_app.py add DATABASE_URL ID EMAIL [ID EMAIL ...]
        more users (upstream's unique index compares exact strings: "DORA@…" can be there
        beside "dora@…", and so can two Unicode forms of one address)
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy import (
    SQLAlchemyBaseOAuthAccountTableUUID,
    SQLAlchemyBaseUserTableUUID,
    SQLAlchemyUserDatabase,
)
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class OldBase(DeclarativeBase):
    pass


class OldOAuthAccount(SQLAlchemyBaseOAuthAccountTableUUID, OldBase):
    pass


class OldUser(SQLAlchemyBaseUserTableUUID, OldBase):
    first_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    oauth_accounts: Mapped[list[OldOAuthAccount]] = relationship("OldOAuthAccount", lazy="joined")


#: (email, first_name, is_verified, is_superuser, linked (oauth_name, account_id) pairs)
SPECS = [
    ("dora@example.com", "Dora", True, False, (("google", "g-1"), ("github", "gh-1"))),
    ("Erin.Mixed@Example.com", "Erin", False, True, ()),
    ("frank@example.com", None, False, False, (("google", "g-2"),)),
]


async def write(url: str) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    helper = PasswordHelper()
    written = []
    try:
        async with engine.begin() as conn:
            await conn.run_sync(OldBase.metadata.create_all)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            db: SQLAlchemyUserDatabase[OldUser, uuid.UUID] = SQLAlchemyUserDatabase(
                session, OldUser, OldOAuthAccount
            )
            for i, (email, first_name, verified, superuser, oauth) in enumerate(SPECS):
                password = f"old password {i}"
                user = await db.create(
                    {
                        "email": email,
                        "hashed_password": helper.hash(password),
                        "first_name": first_name,
                        "is_verified": verified,
                        "is_superuser": superuser,
                    }
                )
                for name, account_id in oauth:
                    user = await db.add_oauth_account(
                        user,
                        {
                            "oauth_name": name,
                            "access_token": f"secret-access-{account_id}",
                            "refresh_token": None,
                            "expires_at": 1_900_000_000,
                            "account_id": account_id,
                            "account_email": email,
                        },
                    )
                written.append(
                    {
                        "id": str(user.id),
                        "email": email,
                        "password": password,
                        "first_name": first_name,
                        "is_verified": verified,
                        "is_superuser": superuser,
                        "oauth": [list(pair) for pair in oauth],
                    }
                )
    finally:
        await engine.dispose()
    return written


async def add(url: str, pairs: list[str]) -> None:
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine)() as session:
            for user_id, email in zip(pairs[::2], pairs[1::2], strict=True):
                await SQLAlchemyUserDatabase(session, OldUser).create(
                    {"id": uuid.UUID(user_id), "email": email, "hashed_password": "x"}
                )
    finally:
        await engine.dispose()


def main(argv: list[str]) -> None:
    match argv:
        case ["write", url]:
            print(json.dumps(asyncio.run(write(url))))
        case ["add", url, *pairs] if pairs and len(pairs) % 2 == 0:
            asyncio.run(add(url, pairs))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
