"""Figure 7: the cost of encrypting personal data (issue 8), on against off in the same run.

On: an `events.crypto.Crypto` attached to the engine (`attach(engine, Crypto(Keyring(...)))`),
so every append seals the personal fields with the stream's data key and every read opens
them. Off: the same code on an engine with nothing attached. Both on the same server.

7a appends: 8 concurrent writers, one event per append, a mix of new users registering (new
streams: a data key is made, wrapped and stored with the event) and existing users changing
their email or password (appends to their streams; for a share of them the stream's key is
not cached, as after a restart or in another process, so it is read and unwrapped first).
Both sides run the same mix on their own streams of one database, alternately in short
slices; median of the slices.

7b replay: `projections.replay.replay` of N events (the seed of figure 3) in a child process,
from a log written with encryption on, against one written with it off, each in its own
database, alternately. Goal: on >= 0.8x off.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import uuid
from typing import Any

from bench.common import (
    CALLERS,
    Options,
    Row,
    create_schema,
    ratio_row,
    scratch_database,
    throughput,
)
from bench.seed import PER_STREAM, seed
from events import EventStore, UserEmailChanged, UserPasswordChanged, UserRegistered, create_engine
from events.crypto import Crypto, Keyring, MasterKey, attach
from projections import OAuthAccount, User, UserProjection
from projections.replay import replay as replay_events

GOAL = 0.8
#: of the appends: new users registering; the rest change an existing user's email or password
NEW_SHARE = 0.4
#: of the appends to existing streams: the stream's key is not cached (forgotten first)
COLD_SHARE = 0.25
#: users each writer owns before the clock starts
USERS_PER_WRITER = 200


#: each side's time is cut into this many alternating slices per round (a burst of load from
#: elsewhere then lands on both sides instead of on one round of one side)
SLICES = 3


def _spread(on: list[float], off: list[float]) -> str:
    """The paired ratios of the slices, lowest to highest (how noisy the run was)."""
    ratios = sorted(a / b for a, b in zip(on, off, strict=True) if b)
    return f"slice ratios {ratios[0]:.2f}-{ratios[-1]:.2f} (n={len(ratios)})" if ratios else ""


class Mix:
    """One side's workload: writer i registers new users or changes one of its own users (so
    writers never race on a stream). Seeded, so both sides draw the same sequence."""

    def __init__(self, store: EventStore, crypto: Crypto | None) -> None:
        self.store = store
        self.crypto = crypto
        self.users: list[list[list[Any]]] = [[] for _ in range(CALLERS)]
        self.rng = [random.Random(i) for i in range(CALLERS)]
        self.counts = {"new": 0, "change": 0, "cold": 0}

    async def populate(self, per_writer: int) -> None:
        async with self.store.engine.begin() as conn:
            for i in range(CALLERS):
                for n in range(per_writer):
                    sid = uuid.uuid4()
                    ev = UserRegistered(
                        email=f"p{i}-{n}-{sid.hex[:6]}@x.org", hashed_password="h" * 60
                    )
                    await self.store.append(sid, [ev], expected_version=0, conn=conn)
                    self.users[i].append([sid, 1])
        self.store.committed()
        if self.crypto is not None:  # populated "earlier": nothing cached
            for mine in self.users:
                for sid, _ in mine:
                    self.crypto.forget(sid)

    async def op(self, i: int) -> None:
        rng = self.rng[i]
        if rng.random() < NEW_SHARE:
            sid = uuid.uuid4()
            ev: Any = UserRegistered(email=f"n-{sid.hex[:12]}@x.org", hashed_password="h" * 60)
            await self.store.append(sid, [ev], expected_version=0)
            self.users[i].append([sid, 1])
            self.counts["new"] += 1
            return
        user = rng.choice(self.users[i])
        sid, version = user
        if rng.random() < 0.5:
            ev = UserEmailChanged(email=f"c-{uuid.uuid4().hex[:12]}@x.org")
        else:
            ev = UserPasswordChanged(hashed_password="p" * 60)
        if rng.random() < COLD_SHARE:
            self.counts["cold"] += 1
            if self.crypto is not None:
                self.crypto.forget(sid)
        await self.store.append(sid, [ev], expected_version=version)
        user[1] = version + 1
        self.counts["change"] += 1


def _crypto() -> Crypto:
    return Crypto(Keyring(MasterKey.generate()))


async def appends(opts: Options) -> Row:
    async with scratch_database(opts.database_url, "crypto_appends") as url:
        engine_on = create_engine(url, pool_size=CALLERS, max_overflow=0)
        engine_off = create_engine(url, pool_size=CALLERS, max_overflow=0)
        crypto = _crypto()
        attach(engine_on, crypto)
        try:
            await create_schema(engine_off)
            on, off = Mix(EventStore(engine_on), crypto), Mix(EventStore(engine_off), None)
            per_writer = USERS_PER_WRITER // (4 if opts.quick else 1)
            await on.populate(per_writer)
            await off.populate(per_writer)
            await throughput(on.op, seconds=0.5)  # warm-up
            await throughput(off.op, seconds=0.5)
            a: list[float] = []
            b: list[float] = []
            for _ in range(opts.rounds * SLICES):
                a.append(await throughput(on.op, seconds=opts.seconds / SLICES))
                b.append(await throughput(off.op, seconds=opts.seconds / SLICES))
        finally:
            await engine_on.dispose()
            await engine_off.dispose()
    c = on.counts
    total = c["new"] + c["change"]
    return ratio_row(
        "7a appends, encryption on vs off",
        statistics.median(a),
        statistics.median(b),
        GOAL,
        unit="events/s",
        note=(
            f"{CALLERS} writers, 1 event each: {c['new'] / total:.0%} new streams, "
            f"{c['change'] / total:.0%} existing ({c['cold'] / max(c['change'], 1):.0%} "
            f"key not cached); {_spread(a, b)}"
        ),
        extra={"on": a, "off": b, "mix": c},
    )


async def child(url: str, key: str | None) -> dict[str, Any]:
    """Replay in this process (with the master key `key`, if given)."""

    engine = create_engine(url)
    if key is not None:
        attach(engine, Crypto(Keyring(MasterKey.parse(key))))
    try:
        result = await replay_events(engine, UserProjection(User, OAuthAccount))
    finally:
        await engine.dispose()
    return {"events": result.events, "seconds": result.seconds, "rate": result.rate}


async def _replay_in_child(url: str, key: str | None) -> float:
    args = [sys.executable, "-m", "bench.encryption", url, *([key] if key else [])]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"replay child exited {proc.returncode}")
    return float(json.loads(out.decode().strip().splitlines()[-1])["rate"])


async def _seeded(url: str, crypto: Crypto | None, n: int) -> int:
    engine = create_engine(url)
    try:
        attach(engine, crypto)
        await create_schema(engine)
        return await seed(EventStore(engine), n)
    finally:
        await engine.dispose()


async def replay(opts: Options) -> Row:
    async with (
        scratch_database(opts.database_url, "crypto_on") as url_on,
        scratch_database(opts.database_url, "crypto_off") as url_off,
    ):
        crypto = _crypto()
        n = await _seeded(url_on, crypto, opts.events)
        await _seeded(url_off, None, opts.events)
        key = crypto.keyring.active.encoded()
        a: list[float] = []
        b: list[float] = []
        for _ in range(max(2, opts.rounds)):
            a.append(await _replay_in_child(url_on, key))
            b.append(await _replay_in_child(url_off, None))
    return ratio_row(
        "7b replay, encryption on vs off",
        statistics.median(a),
        statistics.median(b),
        GOAL,
        unit="events/s",
        note=(
            f"{n:,} events, {n // PER_STREAM:,} users ({PER_STREAM} events each, all sealed "
            f"but UserVerified); {_spread(a, b)}"
        ),
        extra={"on": a, "off": b},
    )


async def run(opts: Options) -> list[Row]:
    return [await appends(opts), await replay(opts)]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(child(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))))
