"""An application's own user models as the FastAPI Users documentation maps them, an OAuth
account to link, and a wait for the projector."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from events import EventStore
from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID
from projections.status import projection_status
from registry import EventSourcedUserDatabase
from tests.support.waiting import eventually


class Base(DeclarativeBase):
    pass


class OAuthAccount(BaseOAuthAccountTableUUID, Base):
    pass


class User(BaseUserTableUUID, Base):
    first_name: Mapped[str | None] = mapped_column(String(255), default=None)
    # the fastapi-users documentation's mapping: no order_by
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship("OAuthAccount", lazy="joined")


OAUTH = {
    "oauth_name": "service1",
    "access_token": "TOKEN",
    "expires_at": 1579000751,
    "account_id": "user_oauth1",
    "account_email": "king.arthur@camelot.bt",
}


async def projector_caught_up(engine: AsyncEngine, store: EventStore, timeout: float = 20) -> None:
    """Wait until every projection has applied the whole log."""

    async def done() -> bool:
        statuses = await projection_status(engine, store)
        return bool(statuses) and all(s.lag_events == 0 for s in statuses)

    await eventually(done, timeout=timeout, message="the projector to catch up")


#: the adapter as the tests hold it. The id type is named because the constructor takes only
#: the user model, so mypy cannot infer it; the user type is left open because mypy refuses
#: the declarative test models as a type argument bound by fastapi-users' `UserProtocol`
#: (while it accepts their instances as values of that protocol)
UserDatabase = EventSourcedUserDatabase[Any, uuid.UUID]
