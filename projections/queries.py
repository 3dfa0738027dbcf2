"""Queries on the read model: one user by id, and filtered pages of users (keyset pagination).

Secret columns (the password hash, OAuth tokens) are never selected, so no caller can leak
them by accident. Custom columns of the app's user model come back under `profile`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, RowMapping, Select, false, select
from sqlalchemy.ext.asyncio import AsyncConnection

from events.emails import lookup_key
from projections.users import OAuthModel, UserModel, table_of

#: columns of the read model that hold secrets: never selected
SECRET_USER_COLUMNS = frozenset({"hashed_password"})
SECRET_OAUTH_COLUMNS = frozenset({"access_token", "refresh_token"})
#: the user columns every model has (BaseUserTableUUID); other public columns are the profile
BASE_USER_COLUMNS = frozenset(
    {"id", "email", "is_active", "is_superuser", "is_verified", "version", "created_at",
     "updated_at"}
)  # fmt: skip
OAUTH_PUBLIC_COLUMNS = ("id", "oauth_name", "account_id", "account_email", "expires_at")
#: candidate names of the OAuth table's link-order column, first found wins
LINK_ORDER_COLUMNS = ("link_order", "linked_version", "position", "ordinal")
MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class UserFilter:
    """Filters of a user listing; None means "any"."""

    email: str | None = None
    is_active: bool | None = None
    is_verified: bool | None = None
    is_superuser: bool | None = None


@dataclass(frozen=True, slots=True)
class UserPage:
    items: list[dict[str, Any]]
    #: the last id of this page when more may follow (the next page starts after it)
    next_after: UUID | None


class ReadModel:
    """Prepared queries over one user table (and optionally its OAuth account table)."""

    def __init__(self, user_model: UserModel, oauth_model: OAuthModel | None = None) -> None:
        self.users = table_of(user_model)
        self.oauth = table_of(oauth_model) if oauth_model is not None else None
        self.user_columns = [c for c in self.users.c if c.name not in SECRET_USER_COLUMNS]
        self.profile_columns = [
            c.name for c in self.user_columns if c.name not in BASE_USER_COLUMNS
        ]
        self.oauth_columns: list[ColumnElement[Any]] = []
        self.oauth_order: list[ColumnElement[Any]] = []
        if self.oauth is not None:
            self.oauth_columns = [
                self.oauth.c[name].label(f"oauth__{name}") for name in OAUTH_PUBLIC_COLUMNS
            ]
            order = [self.oauth.c[n] for n in LINK_ORDER_COLUMNS if n in self.oauth.c]
            self.oauth_order = [*order[:1], self.oauth.c.id]
        # one round trip for GET /users/{id}: the user LEFT JOIN its accounts
        one: Select[Any] = select(*self.user_columns, *self.oauth_columns)
        if self.oauth is not None:
            one = one.select_from(
                self.users.outerjoin(self.oauth, self.oauth.c.user_id == self.users.c.id)
            ).order_by(*self.oauth_order)
        self._one = one

    # ------------------------------------------------------------------ shaping
    def _user(self, row: RowMapping) -> dict[str, Any]:
        data = {c.name: row[c.name] for c in self.user_columns}
        out = {k: v for k, v in data.items() if k in BASE_USER_COLUMNS}
        out["profile"] = {name: data[name] for name in self.profile_columns}
        out["oauth_accounts"] = []
        return out

    @staticmethod
    def _account(row: RowMapping) -> dict[str, Any] | None:
        if row["oauth__id"] is None:
            return None
        return {name: row[f"oauth__{name}"] for name in OAUTH_PUBLIC_COLUMNS}

    # ------------------------------------------------------------------ queries
    async def get_user(self, conn: AsyncConnection, user_id: UUID) -> dict[str, Any] | None:
        """The user with its linked accounts (link order), or None when there is no row."""
        rows = (await conn.execute(self._one.where(self.users.c.id == user_id))).mappings().all()
        if not rows:
            return None
        user = self._user(rows[0])
        if self.oauth is not None:
            user["oauth_accounts"] = [a for a in map(self._account, rows) if a is not None]
        return user

    async def list_users(
        self,
        conn: AsyncConnection,
        flt: UserFilter,
        *,
        after: UUID | None = None,
        limit: int = 50,
    ) -> UserPage:
        """A page of users in id order, starting after `after`; at most `MAX_PAGE` users per
        page. `email` is put in the canonical form (`events.emails`: trimmed, NFC,
        lower-cased), the form the column holds, and compared by plain equality (its index)."""
        limit = max(1, min(limit, MAX_PAGE))
        users = self.users
        stmt = select(*self.user_columns).order_by(users.c.id).limit(limit + 1)
        if flt.email is not None:
            key = lookup_key(flt.email)
            stmt = stmt.where(users.c.email == key if key is not None else false())
        for name in ("is_active", "is_verified", "is_superuser"):
            value = getattr(flt, name)
            if value is not None:
                stmt = stmt.where(users.c[name] == value)
        if after is not None:
            stmt = stmt.where(users.c.id > after)
        rows = (await conn.execute(stmt)).mappings().all()
        more = len(rows) > limit
        items = [self._user(r) for r in rows[:limit]]
        if items and self.oauth is not None:
            await self._attach_accounts(conn, items)
        return UserPage(items=items, next_after=items[-1]["id"] if more else None)

    async def _attach_accounts(
        self, conn: AsyncConnection, items: Sequence[dict[str, Any]]
    ) -> None:
        assert self.oauth is not None
        by_id = {item["id"]: item for item in items}
        stmt = (
            select(self.oauth.c.user_id, *self.oauth_columns)
            .where(self.oauth.c.user_id.in_(list(by_id)))
            .order_by(*self.oauth_order)
        )
        for row in (await conn.execute(stmt)).mappings():
            account = self._account(row)
            if account is not None:
                by_id[row["user_id"]]["oauth_accounts"].append(account)
