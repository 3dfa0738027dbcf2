"""Helpers of the projection tests: an app's own models, table setup, a seeded random
history written straight to the log (with the rows it must produce), and table snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import FromClause

from events import (
    Event,
    EventStore,
    OAuthAccountLinked,
    OAuthAccountUpdated,
    UserActivated,
    UserDeactivated,
    UserDeleted,
    UserEmailChanged,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserUnverified,
    UserVerified,
)
from events.tables import metadata as events_metadata
from projections import BaseOAuthAccountTableUUID, BaseUserTableUUID
from projections.status import PartitionStatus, projection_status
from projections.tables import (
    projection_checkpoints,
    projection_failures,
    projection_leases,
    projection_skips,
    projection_tombstones,
    projection_workers,
)
from projections.worker import ProjectionWorker
from tests.support.waiting import eventually


class AppBase(DeclarativeBase):
    pass


class AppUser(BaseUserTableUUID, AppBase):
    first_name: Mapped[str | None] = mapped_column(String(255), default=None)
    loyalty: Mapped[int | None] = mapped_column(Integer, default=None)


class AppOAuth(BaseOAuthAccountTableUUID, AppBase):
    pass


BOOKKEEPING = [
    projection_checkpoints,
    projection_leases,
    projection_workers,
    projection_tombstones,
    projection_failures,
    projection_skips,
]
#: columns a replay must reproduce but the generator's model does not track
TIMESTAMPS = {"created_at", "updated_at"}


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(events_metadata.create_all)

        def create_bookkeeping(sync_conn: Connection) -> None:
            for table in BOOKKEEPING:
                table.create(sync_conn, checkfirst=True)

        await conn.run_sync(create_bookkeeping)
        await conn.run_sync(AppBase.metadata.create_all)


@dataclass
class Model:
    """What the projection must show after the history: rows by id."""

    users: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    oauth: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    deleted: set[uuid.UUID] = field(default_factory=set)
    events: int = 0


class History:
    """A seeded random history of user events, appended with `store.append` directly."""

    def __init__(self, store: EventStore, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.model = Model()
        self.n = 0

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    async def run(self, events: int) -> Model:
        target = self.model.events + events
        while self.model.events < target:
            await self.step()
        return self.model

    async def step(self) -> None:
        m, rng = self.model, self.rng
        alive = [u for u in m.users if u not in m.deleted]
        if not alive or rng.random() < 0.2:
            sid = self._uuid()
            self.n += 1
            m.users[sid] = {
                "id": sid,
                "email": f"user{self.n}@example.com",
                "hashed_password": f"hash-{self.n}",
                "is_active": True,
                "is_superuser": False,
                "is_verified": rng.random() < 0.5,
                "first_name": None,
                "loyalty": None,
            }
            profile = {}
            if rng.random() < 0.5:
                profile = {"first_name": f"N{self.n}", "unknown_key": 1}
                m.users[sid]["first_name"] = f"N{self.n}"
            evts: list[Event] = [
                UserRegistered(
                    email=m.users[sid]["email"],
                    hashed_password=m.users[sid]["hashed_password"],
                    is_verified=m.users[sid]["is_verified"],
                    profile=profile,
                )
            ]
        else:
            sid = rng.choice(alive)
            evts = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                evts.append(self._change(sid))
                if sid in m.deleted:
                    break
        version = m.versions.get(sid, 0)
        await self.store.append(sid, evts, expected_version=version)
        m.versions[sid] = version + len(evts)
        m.events += len(evts)
        for i, e in enumerate(evts, start=version + 1):
            if isinstance(e, OAuthAccountLinked) and e.oauth_account_id in m.oauth:
                m.oauth[e.oauth_account_id]["link_order"] = i
        if sid in m.deleted:
            m.users.pop(sid, None)
        else:
            m.users[sid]["version"] = m.versions[sid]

    def _change(self, sid: uuid.UUID) -> Event:
        m, rng = self.model, self.rng
        row = m.users[sid]
        kind = rng.randrange(12)
        if kind == 0:
            self.n += 1
            typed = f"Changed{self.n}@Example.com"  # as an event of the old rule stored it
            row["email"] = typed.lower()  # the projection writes the canonical form
            return UserEmailChanged(email=typed)
        if kind == 1:
            row["hashed_password"] = f"rehash-{rng.random()}"
            return UserPasswordChanged(hashed_password=row["hashed_password"])
        if kind == 2:
            row["is_verified"] = not row["is_verified"]
            return UserVerified() if row["is_verified"] else UserUnverified()
        if kind == 3:
            row["is_active"] = not row["is_active"]
            return UserActivated() if row["is_active"] else UserDeactivated()
        if kind == 4:
            row["is_superuser"] = not row["is_superuser"]
            return UserSuperuserGranted() if row["is_superuser"] else UserSuperuserRevoked()
        if kind in (5, 6):
            changes: dict[str, object] = {"loyalty": rng.randrange(1000)}
            if rng.random() < 0.5:
                changes["first_name"] = f"F{rng.randrange(1000)}"
            row.update(changes)
            return UserProfileUpdated(changes=changes)
        mine = [k for k, v in m.oauth.items() if v["user_id"] == sid]
        if kind in (7, 8) or (kind in (9, 10) and not mine):
            oid = self._uuid()
            self.n += 1
            m.oauth[oid] = {
                "id": oid,
                "user_id": sid,
                "oauth_name": rng.choice(("github", "google")),
                "access_token": f"tok-{self.n}",
                "expires_at": rng.choice((None, 1_900_000_000)),
                "refresh_token": None,
                "account_id": f"acc-{self.n}",
                "account_email": row["email"],
            }
            d = m.oauth[oid]
            return OAuthAccountLinked(
                oauth_account_id=oid, **{k: v for k, v in d.items() if k not in ("id", "user_id")}
            )
        if kind in (9, 10):
            oid = rng.choice(mine)
            changes = {
                "access_token": f"tok2-{rng.random()}",
                "expires_at": rng.randrange(10**9),
            }
            if rng.random() < 0.3:
                changes["refresh_token"] = f"ref-{rng.random()}"
            m.oauth[oid].update(changes)
            return OAuthAccountUpdated(oauth_account_id=oid, changes=changes)
        m.deleted.add(sid)
        for oid in mine:
            del m.oauth[oid]
        return UserDeleted()


async def snapshot(
    engine: AsyncEngine, user: FromClause, oauth: FromClause | None
) -> dict[str, Any]:
    """Every row of the user (and OAuth) table, by id, as plain dicts."""
    async with engine.connect() as conn:
        users = {r["id"]: dict(r) for r in (await conn.execute(select(user))).mappings()}
        accounts = {}
        if oauth is not None:
            accounts = {r["id"]: dict(r) for r in (await conn.execute(select(oauth))).mappings()}
    return {"users": users, "oauth": accounts}


def assert_matches_model(snap: dict[str, Any], model: Model) -> None:
    users = {
        k: {c: v for c, v in row.items() if c not in TIMESTAMPS} for k, row in snap["users"].items()
    }
    assert users.keys() == model.users.keys()
    for sid, want in model.users.items():
        assert users[sid] == want, sid
    assert snap["oauth"] == model.oauth


async def caught_up(engine: AsyncEngine, store: EventStore, timeout: float = 20) -> None:
    """Wait until every partition of the users projection has applied the whole log."""

    async def behind() -> list[PartitionStatus] | None:
        statuses = [s for s in await projection_status(engine, store) if s.name == "users"]
        return statuses if statuses and all(s.lag_events == 0 for s in statuses) else None

    await eventually(behind, timeout=timeout, message="the users projection to catch up")


@contextlib.asynccontextmanager
async def running(worker: ProjectionWorker) -> AsyncIterator[ProjectionWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def tombstones(engine: AsyncEngine) -> set[tuple[str, uuid.UUID, int]]:
    async with engine.connect() as conn:
        return {tuple(r) for r in await conn.execute(select(projection_tombstones))}
