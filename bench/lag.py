"""Figure 4: projection lag at a fixed append rate (500 events/s, open loop).

A child process registers one new user every 2 ms (each append its own transaction), as the
API or a bus consumer would, while a `ProjectionWorker` with the default settings
(4 partitions, batches of 500) projects them in this process, as `registry worker` would.
Lag of an event: from its append returning (committed) in the writer to the projector's
commit of the batch holding it (stamped when the worker's post-commit wake-up fires); both
clocks are the system-wide CLOCK_MONOTONIC. Goal: p99 < 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bench.common import Options, Row, create_schema, percentile, scratch_database
from events import EventStore, RecordedEvent, UserRegistered, create_engine
from projections import OAuthAccount, User, UserProjection
from projections.signals import projection_wakeup
from projections.worker import ProjectionWorker
from registry.settings import Settings

RATE = 500.0
GOAL_MS = 50.0


class Stamped:
    """The user projection, noting which streams each batch carried."""

    def __init__(self, inner: UserProjection) -> None:
        self.inner = inner
        self.name = inner.name
        self.handled: list[uuid.UUID] = []

    async def handle(self, conn: AsyncConnection, batch: Sequence[RecordedEvent]) -> None:
        await self.inner.handle(conn, batch)
        self.handled.extend(e.stream_id for e in batch)


async def appender(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """The child: append at `rate` for `seconds`; each stream id with its commit time."""

    engine = create_engine(url)
    store = EventStore(engine)
    committed: dict[str, float] = {}
    append_ms: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def append_one(i: int) -> None:
        sid = uuid.uuid4()
        ev = UserRegistered(email=f"lag{i}@example.com", hashed_password="h" * 60)
        t0 = time.monotonic()
        await store.append(sid, [ev], expected_version=0)
        committed[str(sid)] = t1 = time.monotonic()
        append_ms.append((t1 - t0) * 1000)

    start = time.monotonic()
    i = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while i < int(elapsed * rate) + 1:
            task = asyncio.create_task(append_one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(1 / rate)
    achieved = i / (time.monotonic() - start)
    await asyncio.gather(*tasks)
    await engine.dispose()
    return {
        "committed": committed,
        "rate": achieved,
        "append_p50": percentile(append_ms, 50),
        "append_p99": percentile(append_ms, 99),
    }


async def run(opts: Options) -> list[Row]:
    settings = Settings()
    seconds = 4.0 if opts.quick else 15.0
    async with scratch_database(opts.database_url, "lag") as url:
        engine = create_engine(url)
        await create_schema(engine)
        shim = Stamped(UserProjection(User, OAuthAccount))
        worker = ProjectionWorker(
            engine,
            EventStore(engine),
            shim,
            partitions=settings.projection_partitions,
            batch_size=settings.projection_batch_size,
            lease_ttl=settings.lease_ttl,
        )
        projected: dict[str, float] = {}
        expected: set[str] = set()
        caught_up = asyncio.Event()

        async def observe() -> None:
            wakeup = projection_wakeup(engine)
            while True:
                await wakeup.wait(1.0)
                now = time.monotonic()
                for sid in shim.handled:
                    projected.setdefault(str(sid), now)
                shim.handled.clear()
                if expected and expected <= projected.keys():
                    caught_up.set()

        observer = asyncio.create_task(observe())
        projector = asyncio.create_task(worker.run())
        try:
            await _until_leased(worker)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.lag",
                url,
                str(RATE),
                str(seconds),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"appender exited {proc.returncode}")
            found = json.loads(out.decode().strip().splitlines()[-1])
            committed: dict[str, float] = found["committed"]
            expected.update(committed)
            if expected <= projected.keys():
                caught_up.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up.wait(), 30)
        finally:
            for task in (projector, observer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await engine.dispose()
    lags = [max(0.0, projected[s] - t) * 1000 for s, t in committed.items() if s in projected]
    missing = len(committed) - len(lags)
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    return [
        Row(
            "4 projection lag p99 (p50 in note)",
            p99,
            None,
            unit="ms",
            goal=f"p99 < {GOAL_MS:g} ms",
            ok=p99 < GOAL_MS and missing == 0,
            note=f"p50 {p50:.1f} ms, max {max(lags, default=0):.1f} ms; {len(lags):,} events at "
            f"{found['rate']:,.0f}/s for {seconds:g}s; append p50 {found['append_p50']:.1f} ms "
            f"p99 {found['append_p99']:.1f} ms"
            + (f"; {missing} never projected" if missing else ""),
        )
    ]


async def _until_leased(worker: ProjectionWorker) -> None:
    deadline = time.monotonic() + 30
    while len(worker.held) < worker.partitions:
        if time.monotonic() > deadline:
            raise RuntimeError("the projector took no leases within 30 s")
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    result = asyncio.run(appender(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(result))
