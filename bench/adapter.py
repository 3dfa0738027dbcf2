"""Figure 1: the FastAPI Users adapter, create + get + update + get, 8 concurrent callers.

One operation is what a registration followed by a profile change does through FastAPI Users:
`create`, `get`, `update(is_verified=True)`, then `get` again, which must show the update
(read-your-writes). Ours: `EventSourcedUserDatabase(session, User, OAuthAccount)` with the
projector running in this process (`run_projector`, default settings), so each write returns
only once the read model shows it. Baseline: fastapi-users-db-sqlalchemy's
`SQLAlchemyUserDatabase` on the same database (its own `user`/`oauth_account` tables in a
`baseline` schema, the documented OAuth relationship, lazy="selectin"). Goal >= 1.0x.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi_users.db import BaseUserDatabase
from fastapi_users.models import UP
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.common import Options, Row, create_schema, ratio_row, scratch_database, side_by_side
from events import EventStore, create_engine
from projections import OAuthAccount, User, UserProjection
from registry.adapter import EventSourcedUserDatabase
from registry.adapter.projector import run_projector
from registry.adapter.runtime import EncryptingHandlers, custom_columns, use_handlers
from registry.settings import Settings

GOAL = 1.0
FIGURE = "1 adapter create+get+update+get"


def _cycle(
    session_maker: async_sessionmaker[AsyncSession],
    make_db: Callable[[AsyncSession], BaseUserDatabase[UP, uuid.UUID]],
) -> Callable[[int], Awaitable[None]]:
    async def op(_: int) -> None:
        async with session_maker() as session:
            db = make_db(session)
            email = f"a{uuid.uuid4().hex[:12]}@example.com"
            user = await db.create({"email": email, "hashed_password": "h" * 60})
            got = await db.get(user.id)
            if got is None or got.email != email:
                raise RuntimeError("created user not readable")
            await db.update(got, {"is_verified": True})
            again = await db.get(user.id)
            if again is None or not again.is_verified:
                raise RuntimeError("update not readable (read-your-writes)")

    return op


async def run(opts: Options) -> list[Row]:
    try:
        from bench.peer import (  # noqa: PLC0415  # the `bench` extra's; a row says if missing
            BaselineBase,
            BaselineOAuthAccount,
            BaselineUser,
            SQLAlchemyUserDatabase,
        )
    except ImportError as exc:
        return [Row(FIGURE, goal=f">= {GOAL:g}x", note=f"not available: baseline: {exc}")]

    async with scratch_database(opts.database_url, "adapter") as url:
        engine = create_engine(url)
        try:
            await create_schema(engine)
            async with engine.begin() as conn:
                await conn.execute(text("CREATE SCHEMA baseline"))
                await conn.run_sync(BaselineBase.metadata.create_all)
            session_maker = async_sessionmaker(engine, expire_on_commit=False)
            ours = _cycle(session_maker, lambda s: EventSourcedUserDatabase(s, User, OAuthAccount))
            theirs = _cycle(
                session_maker,
                lambda s: SQLAlchemyUserDatabase(s, BaselineUser, BaselineOAuthAccount),
            )
            settings = Settings(database_url=url)
            async with run_projector(engine, User, OAuthAccount, migrate=False, settings=settings):
                a, b = await side_by_side(ours, theirs, opts)
            # REGISTRY_PROJECTION_MODE=inline: the handlers project in the append transaction
            inline_engine = create_engine(url)
            inline_projection = UserProjection(User, OAuthAccount)
            runtime = use_handlers(
                inline_engine,
                EncryptingHandlers(  # personal data sealed, as in worker mode and production
                    inline_engine,
                    EventStore(inline_engine),
                    profile_fields=custom_columns(User),
                    inline_projection=inline_projection,
                    settings=settings,
                    models=(User, OAuthAccount),
                ),
                User,
                OAuthAccount,
            )
            runtime.projection = inline_projection
            assert runtime.inline
            inline_maker = async_sessionmaker(inline_engine, expire_on_commit=False)
            inline = _cycle(inline_maker, lambda s: EventSourcedUserDatabase(s, User, OAuthAccount))
            try:
                c, d = await side_by_side(inline, theirs, opts)
            finally:
                await inline_engine.dispose()
        finally:
            await engine.dispose()
    return [
        ratio_row(
            FIGURE + " (worker mode)",
            a,
            b,
            GOAL,
            unit="ops/s",
            note="8 callers; each write waits for the in-process projector (default mode)",
        ),
        ratio_row(
            FIGURE + " (inline mode)",
            c,
            d,
            GOAL,
            unit="ops/s",
            note="8 callers; REGISTRY_PROJECTION_MODE=inline, projected in the append transaction"
            " (personal data encrypted in both modes)",
        ),
    ]
