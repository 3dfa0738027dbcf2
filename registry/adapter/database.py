"""`EventSourcedUserDatabase`: FastAPI Users' database adapter over the event log.

A drop-in for fastapi-users-db-sqlalchemy's `SQLAlchemyUserDatabase(session, User)`: reads come
from the projected `user` / `oauth_account` tables through the app's session; writes become
commands (the one write path, `CommandHandlers`) and return only once the projection shows
them (read-your-writes).
"""

from __future__ import annotations

import uuid
from typing import Any, Generic, cast

from fastapi_users.db.base import BaseUserDatabase
from fastapi_users.exceptions import UserAlreadyExists, UserNotExists
from fastapi_users.models import ID, OAP, UP
from pydantic import ValidationError
from sqlalchemy import bindparam, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, joinedload
from sqlalchemy.sql import Select

from events.emails import lookup_key
from registry.adapter.runtime import Runtime, engine_of, runtime_for
from registry.bootstrap import OAuthModel, UserModel, custom_columns
from registry.domain.commands import (
    Command,
    DeleteUser,
    EraseUser,
    LinkOAuthAccount,
    RegisterUser,
    UpdateOAuthAccount,
    UpdateUser,
)
from registry.errors import (
    EmailAlreadyRegisteredError,
    InvalidCommandError,
    UserAlreadyExistsError,
    UserNotFoundError,
)
from registry.service.handlers import Outcome
from registry.service.retry import session_read

USER_FIELDS = ("email", "password", "hashed_password", "is_active", "is_superuser", "is_verified")
OAUTH_FIELDS = ("access_token", "expires_at", "refresh_token", "account_id", "account_email")


def _build(cls: type[Command], data: dict[str, Any]) -> Command:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:  # never echo the input: it may hold a password
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise InvalidCommandError(f"invalid {cls.name} request: {details}") from None


class EventSourcedUserDatabase(Generic[UP, ID], BaseUserDatabase[UP, ID]):
    """Database adapter for FastAPI Users backed by the event log.

    :param session: the app's SQLAlchemy `AsyncSession` (reads, and the engine to write on).
    :param user_table: the app's user model (a `BaseUserTableUUID` subclass).
    :param oauth_account_table: the app's OAuth account model, if it uses OAuth.
    :param erase_on_delete: make `delete()` erase the user (`erase()`), so FastAPI Users'
        `DELETE /users/{id}` (and `UserManager.delete`) honours the right to erasure.

    Nothing else is needed: on first use the adapter makes the registry's tables and the
    model's tables when missing, and its own writes are visible to its reads even when no
    projector runs (`run_projector` adds projecting other writers' events in-process).

    Writes raise `fastapi_users.exceptions.UserAlreadyExists` for a taken email (any letter
    case), `UserNotExists` for a deleted user, `registry.errors.InvalidCommandError` for a key
    that is not a column (nothing is written), and `ProjectionTimeoutError` when the read model
    does not catch up in time (the message says when no projector is running).
    """

    def __init__(
        self,
        session: AsyncSession,
        user_table: type[UP],
        oauth_account_table: OAuthModel | None = None,
        *,
        erase_on_delete: bool = False,
    ) -> None:
        self.session = session
        self.user_table = user_table
        self.oauth_account_table = oauth_account_table
        self.erase_on_delete = erase_on_delete
        self._runtime: Runtime | None = None

    # ------------------------------------------------------------------ reads
    async def get(self, id: ID) -> UP | None:
        """The user with this id, or None."""
        runtime = self._rt()
        await runtime.prepare(write=False)
        stmt = runtime.by_id
        if stmt is None:  # with a bind parameter, built once: SQLAlchemy reuses its cache key
            stmt = self._prepare(select(self.user_table).where(self._col("id") == bindparam("id")))
            runtime.by_id = stmt
        return await self._one(stmt, {"id": id}, prepared=True)

    async def get_by_email(self, email: str) -> UP | None:
        """The user with this email, or None. The typed address is put in the canonical form
        (`events.emails.normalise_email`: trimmed, NFC, lower-cased), which is how the read
        model stores it: plain equality, no database `lower()`."""
        if not isinstance(email, str):  # a PATCH with "email": null asks for None
            return None
        key = lookup_key(email)
        if key is None:  # NUL, a lone surrogate: no address holds one
            return None
        await self._rt().prepare(write=False)
        # two rows may hold one address for a moment (an address moved between users and
        # one partition is behind), or for good after migration 0006 merged two spellings:
        # the first registered answers, never a MultipleResultsFound
        first = getattr(self.user_table, "created_at", None)
        order = [self._col("id")] if first is None else [first, self._col("id")]
        stmt = select(self.user_table).where(self._col("email") == key).order_by(*order).limit(1)
        return await self._one(stmt)

    async def get_by_oauth_account(self, oauth: str, account_id: str) -> UP | None:
        """The user who linked this OAuth account, or None."""
        oauth_table = self._oauth_table()
        await self._rt().prepare(write=False)
        stmt = (
            select(self.user_table)
            .join(oauth_table, oauth_table.user_id == self._col("id"))
            .where(oauth_table.oauth_name == oauth, oauth_table.account_id == account_id)
        )
        return await self._one(stmt)

    # ------------------------------------------------------------------ writes
    async def create(self, create_dict: dict[str, Any]) -> UP:
        """Register a user (uuid4 id unless `id` is given) and return it as projected."""
        data, profile = self._split(create_dict, creating=True)
        data["user_id"] = create_dict.get("id") or uuid.uuid4()
        data = {k: v for k, v in data.items() if v is not None}
        outcome = await self._write(_build(RegisterUser, {**data, "profile": profile}))
        user: UP | None = self._rt().written_user(self.session, self.user_table, outcome)
        return user if user is not None else await self._reload(outcome.user_id)

    async def update(self, user: UP, update_dict: dict[str, Any]) -> UP:
        """Change a user (only what differs becomes events) and return it as projected.
        `password` is hashed here; None values of the built-in fields mean "unchanged"."""
        user_id = self._id_of(user)
        data, profile = self._split(update_dict, creating=False, user_id=user_id)
        data = {k: v for k, v in data.items() if v is not None}
        outcome = await self._write(
            _build(UpdateUser, {**data, "user_id": user_id, "profile": profile})
        )
        if self._rt().written_update(self.session, user, outcome):
            return user
        return await self._reload(user_id)

    async def delete(self, user: UP) -> None:
        """Delete a user, OAuth accounts included; `get` returns None afterwards. With
        `erase_on_delete=True` the user is erased instead (see `erase`)."""
        if self.erase_on_delete:
            await self.erase(user)
            return
        await self._write(DeleteUser(user_id=self._id_of(user)))

    async def erase(self, user: UP) -> None:
        """Erase the user's personal data (the right to erasure; cannot be undone).

        Their data key is destroyed in the same transaction as a `UserErased` event: email,
        password hash, OAuth tokens and account ids and personal custom columns become
        unreadable everywhere in the log; their rows and email/OAuth reservations go (`get`
        returns None once this returns) and the address can be registered again. Works on a
        deleted user too; erasing an erased one changes nothing. Raises `UserNotExists` for a
        user id the log never had."""
        await self._write(EraseUser(user_id=self._id_of(user)))

    async def add_oauth_account(self, user: UP, create_dict: dict[str, Any]) -> UP:
        """Link an OAuth account; the user is returned with `oauth_accounts` in link order."""
        self._oauth_table()
        user_id = self._id_of(user)
        data = self._oauth_fields(create_dict, user_id, creating=True)
        data["oauth_account_id"] = create_dict.get("id")
        await self._write(_build(LinkOAuthAccount, {**data, "user_id": user_id}))
        return await self._reload(user_id)

    async def update_oauth_account(
        self, user: UP, oauth_account: OAP, update_dict: dict[str, Any]
    ) -> UP:
        """Change a linked OAuth account; the user is returned with `oauth_accounts` loaded."""
        self._oauth_table()
        user_id = self._id_of(user)
        state: Any = inspect(oauth_account)
        account_id = state.identity[0] if state.identity else oauth_account.id
        current = state.dict.get("oauth_name")
        data = self._oauth_fields(update_dict, user_id, creating=False)
        name = data.pop("oauth_name", None)
        if name is not None and current is not None and name != current:
            raise InvalidCommandError("an OAuth account's oauth_name cannot change")
        cmd = _build(
            UpdateOAuthAccount,
            {**data, "user_id": user_id, "oauth_account_id": account_id},
        )
        await self._write(cmd)
        return await self._reload(user_id)

    # ------------------------------------------------------------------ helpers
    def _col(self, name: str) -> InstrumentedAttribute[Any]:
        column: InstrumentedAttribute[Any] = getattr(self.user_table, name)
        return column

    def _oauth_table(self) -> OAuthModel:
        if self.oauth_account_table is None:
            raise NotImplementedError()
        return self.oauth_account_table

    def _rt(self) -> Runtime:
        if self._runtime is None:
            # fastapi-users types models by protocol; the registry's are its mixins' subclasses
            user_table = cast(UserModel, self.user_table)
            engine = engine_of(self.session, user_table)
            self._runtime = runtime_for(engine, user_table, self.oauth_account_table)
        return self._runtime

    def _id_of(self, user: UP) -> uuid.UUID:
        # from the identity map, not the attribute: a committed session expires attributes
        state: Any = inspect(user)
        identity = state.identity
        return cast(uuid.UUID, identity[0] if identity else user.id)

    def _split(
        self, values: dict[str, Any], *, creating: bool, user_id: uuid.UUID | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Built-in fields and custom columns ("profile"); any other key is refused."""
        custom = custom_columns(cast(UserModel, self.user_table))
        data: dict[str, Any] = {}
        profile: dict[str, Any] = {}
        for key, value in values.items():
            if key in USER_FIELDS:
                data[key] = value
            elif key in custom:
                profile[key] = value
            elif key == "id" and (creating or value == user_id):
                continue
            else:
                name = getattr(self.user_table, "__name__", "user")
                raise InvalidCommandError(
                    f"cannot {'create' if creating else 'update'} {key!r}: it is not a column "
                    f"of {name} that can be written (custom columns: "
                    f"{', '.join(sorted(custom)) or 'none'})"
                )
        return data, profile

    def _oauth_fields(
        self, values: dict[str, Any], user_id: uuid.UUID, *, creating: bool
    ) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in values.items():
            if key in OAUTH_FIELDS or key == "oauth_name":
                data[key] = value
            elif key in ("id", "user_id") and (creating or key == "user_id"):
                if key == "user_id" and value not in (None, user_id):
                    raise InvalidCommandError("an OAuth account cannot move to another user")
            else:
                raise InvalidCommandError(f"{key!r} is not a writable OAuth account column")
        return data

    async def _write(self, command: Command) -> Outcome:
        runtime = self._rt()
        await runtime.prepare(write=True)
        # like upstream, a write ends the session's transaction: its snapshot must not hide
        # the row the projector is about to write
        await self.session.commit()
        try:
            outcome = await runtime.handlers.handle(command)
        except (EmailAlreadyRegisteredError, UserAlreadyExistsError) as exc:
            raise UserAlreadyExists() from exc
        except UserNotFoundError as exc:
            raise UserNotExists() from exc
        await runtime.wait(outcome)
        return outcome

    def _prepare(self, stmt: Select[Any]) -> Select[Any]:
        mapper: Any = inspect(self.user_table)
        rel = mapper.relationships.get("oauth_accounts")
        if rel is not None:
            # one query: the user and its OAuth accounts joined (selectin costs a second one)
            stmt = stmt.options(joinedload(rel.class_attribute))
        return stmt.execution_options(populate_existing=True)

    async def _one(
        self, stmt: Select[Any], params: dict[str, Any] | None = None, *, prepared: bool = False
    ) -> UP | None:
        if not prepared:
            stmt = self._prepare(stmt)
        result = await session_read(self.session, stmt, params)  # once more if disconnected
        user: UP | None = result.unique().scalar_one_or_none()
        mapper: Any = inspect(self.user_table)
        rel = mapper.relationships.get("oauth_accounts")
        if user is not None and rel is not None:
            accounts = getattr(user, "oauth_accounts", None)
            if accounts and hasattr(accounts[0], "link_order"):
                accounts.sort(key=lambda a: a.link_order)  # link order, whatever the mapping
        return user

    async def _reload(self, user_id: uuid.UUID) -> UP:
        # the registry keys every user by a UUID: that is the ID of every model it accepts
        user = await self.get(cast(ID, user_id))
        if user is None:  # deleted by someone else after our write
            raise UserNotExists()
        return user
