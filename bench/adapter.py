"""Figure 1: the FastAPI Users adapter against `SQLAlchemyUserDatabase`, operation by operation.

What is measured:

- Four operations, each a row of its own: `create` (a new user), `get` (by id, an existing
  user), `get_by_email` (an existing user) and `get+update` (`get` an existing user, then
  `update(user, {"is_verified": <toggled>})`, which returns the updated user). Every operation
  runs in a fresh `AsyncSession` from `async_sessionmaker(engine, expire_on_commit=False)`, one
  session per request as FastAPI Users apps do, with 8 callers at once; `side_by_side` runs ours
  and the peer alternately, round by round, and reports the medians.
- Ours is `EventSourcedUserDatabase(session, User[, OAuthAccount])`, the peer
  fastapi-users-db-sqlalchemy's `SQLAlchemyUserDatabase(session, User[, OAuthAccount])` with the
  same model shape, on the same database (its tables in a `baseline` schema) through the same
  engine: the app's plain `sqlalchemy.ext.asyncio.create_async_engine(url)`.
- Two model shapes, each in a scratch database of its own: no OAuth (a `User` without
  relationship, the common app) and OAuth (`oauth_accounts = relationship("OAuthAccount",
  lazy="joined")` on both sides, as the FastAPI Users docs declare it, and the adapters given the
  OAuth model). The users read and updated have no OAuth accounts linked.
- Two modes for our writes. Default (worker) mode: `run_projector(engine, User[, OAuthAccount])`
  runs in this process on the app's engine, as the README's lifespan has it. Inline mode:
  `REGISTRY_PROJECTION_MODE=inline` when the adapter is first used on a second engine of the
  same database; the write projects in its append transaction and no projector runs. Reads do
  not depend on the mode: they are measured once per shape, in default mode. The peer is
  measured beside each of our rows, on the same engine.
- The app's engine has SQLAlchemy's default pool (5 connections, 10 more on demand, each of
  those closed when returned while 5 wait idle): with 8 callers both sides open connections
  again and again, as often as their callers leave connections idle. Two more rows (no OAuth,
  default mode) run both sides on an engine with `pool_size=8`, a connection per caller.
- Users read and updated are those the create rows made (each side through its own adapter),
  topped up through the same adapter so both sides have as many, at least `SEED`; each caller
  picks at random among its own eighth of them, so no two callers update one user at once.
- Personal data is encrypted, PostgreSQL's default (`python -m bench` sets a master key).
- Round trips: each operation is run `ROUND_TRIPS_OPS` times, one after another with no other
  callers, counting on the engine the statements (`before_cursor_execute`) and the transaction
  begins, commits and rollbacks (asyncpg sends each of those as a round trip of its own; on an
  AUTOCOMMIT connection none is sent, and none is counted),
  averaged per operation. Ours in default mode also shows, apart, what the in-process
  projector sent on the same engine in that time ("+N by the projector", per operation).
  Statements sent on a driver connection directly (COPY) are not seen.

Goal >= 1x for every row; the aim for create in default mode is 1.5x.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fastapi_users.db import BaseUserDatabase
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from bench.adapter_models import OAuthAccount, OAuthUser, PlainUser
from bench.common import CALLERS, Options, Row, ratio_row, scratch_database, side_by_side
from registry.adapter import EventSourcedUserDatabase
from registry.adapter.projector import run_projector
from registry.adapter.runtime import runtime_for
from registry.bootstrap import OAuthModel, UserModel
from registry.settings import get_settings

GOAL = 1.0
FIGURE = "1"
#: users per side (at least) that reads and updates pick from
SEED = 1000
SEED_QUICK = 100
#: operations run one after another to count round trips
ROUND_TRIPS_OPS = 50
ROUND_TRIPS_OPS_QUICK = 10
#: a stored hash (hashing is FastAPI Users' work, done before the adapter is called)
HASHED_PASSWORD = "$argon2id$v=19$m=65536,t=3,p=4$" + "h" * 60
#: the row letter of each operation
LETTERS = {"create": "a", "get": "b", "get_by_email": "c", "get+update": "d"}
ROUND_TRIP_KINDS = ("statements", "begin", "commit", "rollback")
#: the rows on an engine with a connection per caller (`pool_size=CALLERS`)
POOLED = f"pool_size={CALLERS}"

Op = Callable[[int], Awaitable[None]]
MakeDb = Callable[[AsyncSession], BaseUserDatabase[Any, uuid.UUID]]

#: set while an operation whose round trips are counted runs (tasks it starts inherit it)
COUNTED: ContextVar[bool] = ContextVar("bench_adapter_counted", default=False)


def _seconds(opts: Options) -> float:
    """Each side's time per round: half the figures' usual, for the figure's 12 rows."""
    return 0.4 if opts.quick else opts.seconds / 2


@dataclass
class Side:
    """One side's adapter on one engine, the users it made, and its operations."""

    maker: async_sessionmaker[AsyncSession]
    make_db: MakeDb
    users: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    def on(self, engine: AsyncEngine) -> Side:
        """The same adapter and users, through another engine."""
        return Side(async_sessionmaker(engine, expire_on_commit=False), self.make_db, self.users)

    def _pick(self, caller: int) -> tuple[uuid.UUID, str]:
        # this caller's eighth of the users: no two callers update one user at once
        return self.users[random.randrange(caller % CALLERS, len(self.users), CALLERS)]

    async def create(self, _caller: int) -> None:
        email = f"u{uuid.uuid4().hex}@example.com"
        async with self.maker() as session:
            user = await self.make_db(session).create(
                {"email": email, "hashed_password": HASHED_PASSWORD}
            )
        if user.email != email:
            raise RuntimeError("create returned another user")
        self.users.append((user.id, email))

    async def get(self, caller: int) -> None:
        user_id, _ = self._pick(caller)
        async with self.maker() as session:
            user = await self.make_db(session).get(user_id)
        if user is None or user.id != user_id:
            raise RuntimeError("get: an existing user not found")

    async def get_by_email(self, caller: int) -> None:
        user_id, email = self._pick(caller)
        async with self.maker() as session:
            user = await self.make_db(session).get_by_email(email)
        if user is None or user.id != user_id:
            raise RuntimeError("get_by_email: an existing user not found")

    async def get_update(self, caller: int) -> None:
        user_id, _ = self._pick(caller)
        async with self.maker() as session:
            db = self.make_db(session)
            user = await db.get(user_id)
            if user is None:
                raise RuntimeError("get+update: an existing user not found")
            verified = not user.is_verified
            updated = await db.update(user, {"is_verified": verified})
        if updated.is_verified is not verified:
            raise RuntimeError("update did not return the updated user")

    def op(self, name: str) -> Op:
        ops: dict[str, Op] = {
            "create": self.create,
            "get": self.get,
            "get_by_email": self.get_by_email,
            "get+update": self.get_update,
        }
        return ops[name]


async def _top_up(side: Side, count: int) -> None:
    """Create users through the side's adapter, 8 at once, until it has `count`."""

    async def caller(i: int) -> None:
        while len(side.users) < count:
            await side.create(i)

    await asyncio.gather(*(caller(i) for i in range(CALLERS)))


def _sent(conn: Connection) -> bool:
    """Whether a begin, commit or rollback on `conn` reaches the server: on an AUTOCOMMIT
    connection SQLAlchemy still fires the events, but asyncpg sends nothing."""
    return conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT"


class RoundTrips:
    """What one engine sends to the server: statements, and transaction begins, commits and
    rollbacks; those of a counted operation (`COUNTED`) apart from everyone else's."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.counts: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
        self._listeners: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._statement),
            ("begin", self._begin),
            ("commit", self._commit),
            ("rollback", self._rollback),
        ]
        for name, fn in self._listeners:
            event.listen(self.engine, name, fn)

    def close(self) -> None:
        for name, fn in self._listeners:
            event.remove(self.engine, name, fn)

    def _statement(self, *_: object) -> None:
        self.counts[COUNTED.get()]["statements"] += 1

    def _begin(self, conn: Connection, *_: object) -> None:
        if _sent(conn):
            self.counts[COUNTED.get()]["begin"] += 1

    def _commit(self, conn: Connection, *_: object) -> None:
        if _sent(conn):
            self.counts[COUNTED.get()]["commit"] += 1

    def _rollback(self, conn: Connection, *_: object) -> None:
        if _sent(conn):
            self.counts[COUNTED.get()]["rollback"] += 1

    async def per_op(self, op: Op, n: int) -> tuple[dict[str, float], float]:
        """`op` run `n` times in a row: its round trips per operation by kind, and everyone
        else's (the in-process projector's) per operation in that time."""
        self.counts = {True: Counter(), False: Counter()}
        for i in range(n):
            token = COUNTED.set(True)
            try:
                await op(i)
            finally:
                COUNTED.reset(token)
        own = {kind: self.counts[True][kind] / n for kind in ROUND_TRIP_KINDS}
        return own, sum(self.counts[False].values()) / n


@contextlib.contextmanager
def _projection_mode(mode: str) -> Iterator[None]:
    """`REGISTRY_PROJECTION_MODE=mode` while the block runs (the adapter reads the settings on
    its first use on an engine, `run_projector` when it starts), then the environment as it
    was. The settings are read from the environment once and kept (`get_settings`): read
    again on entry and on exit."""
    before = os.environ.get("REGISTRY_PROJECTION_MODE")
    os.environ["REGISTRY_PROJECTION_MODE"] = mode
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ["REGISTRY_PROJECTION_MODE"]
        else:
            os.environ["REGISTRY_PROJECTION_MODE"] = before
        get_settings.cache_clear()


@dataclass(frozen=True)
class Shape:
    label: str  # "no OAuth" / "OAuth"
    tag: str  # scratch database name part
    user: UserModel
    oauth: OAuthModel | None
    peer_base: type[DeclarativeBase]
    peer_user: type[Any]
    peer_oauth: type[Any] | None


@dataclass
class Figure:
    opts: Options
    rows: dict[tuple[str, str, str], Row] = field(default_factory=dict)

    async def measure(
        self,
        shape: Shape,
        op: str,
        mode: str,
        ours: Side,
        peer: Side,
        counter: RoundTrips,
    ) -> None:
        opts = self.opts
        a, b = await side_by_side(
            ours.op(op),
            peer.op(op),
            opts,
            warmup=0.2 if opts.quick else 0.5,
            seconds=_seconds(opts),
        )
        n = ROUND_TRIPS_OPS_QUICK if opts.quick else ROUND_TRIPS_OPS
        ours_trips, projector = await counter.per_op(ours.op(op), n)
        peer_trips, _ = await counter.per_op(peer.op(op), n)
        ours_total = sum(ours_trips.values())
        peer_total = sum(peer_trips.values())
        note = f"round trips: ours {ours_total:.1f} / peer {peer_total:.1f}"
        worker = mode in ("default", POOLED)
        if worker and op in ("create", "get+update"):
            note += f" (+{projector:.1f} by the projector)"
        if op in ("get", "get_by_email"):
            name = f"{FIGURE}{LETTERS[op]} {op} ({shape.label}, either mode)"
        elif mode == POOLED:
            name = f"{FIGURE}{LETTERS[op]} {op} ({shape.label}, default mode, {POOLED})"
        else:
            name = f"{FIGURE}{LETTERS[op]} {op} ({shape.label}, {mode} mode)"
        self.rows[(shape.tag, op, mode)] = ratio_row(
            name,
            a,
            b,
            GOAL,
            unit="ops/s",
            note=note,
            extra={
                "round_trips": {
                    "ours": ours_total,
                    "peer": peer_total,
                    "ours_by_kind": ours_trips,
                    "peer_by_kind": peer_trips,
                    "projector": projector if worker else 0.0,
                },
                "callers": CALLERS,
                "seconds_per_round": _seconds(opts),
            },
        )

    async def shape(self, shape: Shape, peer_adapter: type[Any]) -> None:
        opts = self.opts
        models = (shape.user, shape.oauth)
        peer_models = (shape.peer_user, shape.peer_oauth)
        async with scratch_database(opts.database_url, f"adapter_{shape.tag}") as url:
            engine = create_async_engine(url)  # the app's plain engine, shared by both sides
            counter = RoundTrips(engine)
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("CREATE SCHEMA baseline"))
                    await conn.run_sync(shape.peer_base.metadata.create_all)
                maker = async_sessionmaker(engine, expire_on_commit=False)
                ours = Side(maker, lambda s: EventSourcedUserDatabase(s, *models))
                peer = Side(maker, lambda s: peer_adapter(s, *peer_models))
                with _projection_mode("worker"):
                    # creates the registry's and the models' tables, as in an app's lifespan
                    async with run_projector(engine, *models):
                        await self.measure(shape, "create", "default", ours, peer, counter)
                        if runtime_for(engine, *models).inline:
                            raise RuntimeError("default mode: the adapter projects inline")
                        seed = SEED_QUICK if opts.quick else SEED
                        most = max(seed, len(ours.users), len(peer.users))
                        await _top_up(ours, most)
                        await _top_up(peer, most)
                        for op in ("get", "get_by_email", "get+update"):
                            await self.measure(shape, op, "default", ours, peer, counter)
                await self.inline(shape, url, ours, peer)
                if shape.tag == "plain":
                    await self.pooled(shape, url, ours, peer)
            finally:
                counter.close()
                await engine.dispose()

    async def inline(self, shape: Shape, url: str, ours: Side, peer: Side) -> None:
        """Our writes with `REGISTRY_PROJECTION_MODE=inline` (no projector), on an engine of
        their own, beside the peer on the same engine."""
        engine = create_async_engine(url)
        counter = RoundTrips(engine)
        try:
            with _projection_mode("inline"):
                ours_inline, peer_inline = ours.on(engine), peer.on(engine)
                await self.measure(shape, "create", "inline", ours_inline, peer_inline, counter)
                if not runtime_for(engine, shape.user, shape.oauth).inline:
                    raise RuntimeError("inline mode: the adapter does not project inline")
                await self.measure(shape, "get+update", "inline", ours_inline, peer_inline, counter)
        finally:
            counter.close()
            await engine.dispose()

    async def pooled(self, shape: Shape, url: str, ours: Side, peer: Side) -> None:
        """Default mode again, on an engine whose pool holds a connection per caller: with the
        default pool (5) and 8 callers, connections beyond the pool are closed when returned
        and opened again, and how often depends on how long each side holds one."""
        engine = create_async_engine(url, pool_size=CALLERS)
        counter = RoundTrips(engine)
        try:
            with _projection_mode("worker"):
                async with run_projector(engine, shape.user, shape.oauth):
                    ours_p, peer_p = ours.on(engine), peer.on(engine)
                    for op in ("create", "get+update"):
                        await self.measure(shape, op, POOLED, ours_p, peer_p, counter)
        finally:
            counter.close()
            await engine.dispose()

    def ordered(self, shapes: list[Shape]) -> list[Row]:
        order = [
            ("create", "default"),
            ("create", POOLED),
            ("create", "inline"),
            ("get", "default"),
            ("get_by_email", "default"),
            ("get+update", "default"),
            ("get+update", POOLED),
            ("get+update", "inline"),
        ]
        return [
            self.rows[(s.tag, op, mode)]
            for s in shapes
            for op, mode in order
            if (s.tag, op, mode) in self.rows
        ]


async def run(opts: Options) -> list[Row]:
    try:
        from bench.peer import (  # noqa: PLC0415  # the `bench` extra's; a row says if missing
            PeerOAuthAccount,
            PeerOAuthBase,
            PeerOAuthUser,
            PeerPlainBase,
            PeerPlainUser,
            SQLAlchemyUserDatabase,
        )
    except ImportError as exc:
        return [Row(FIGURE + " adapter", goal=f">= {GOAL:g}x", note=f"not available: peer: {exc}")]

    shapes = [
        Shape("no OAuth", "plain", PlainUser, None, PeerPlainBase, PeerPlainUser, None),
        Shape(
            "OAuth",
            "oauth",
            OAuthUser,
            OAuthAccount,
            PeerOAuthBase,
            PeerOAuthUser,
            PeerOAuthAccount,
        ),
    ]
    figure = Figure(opts)
    for shape in shapes:
        await figure.shape(shape, SQLAlchemyUserDatabase)
    return figure.ordered(shapes)
