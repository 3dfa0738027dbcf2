"""Figure 3: replay of N events into the user projection (blue/green, as `registry replay`).

Ours: `projections.replay.replay` run in a child process (so its peak RSS is its own), events/s,
with `--jobs` one per core (the bulk phase in that many processes) and with one process.
Baseline: asyncpg `copy_records_to_table` of the same final rows into a copy of the `user`
table, expressed as log events per second (N / COPY seconds): the fastest the read model could
possibly be written. Goal >= 0.3x that, and peak RSS < 300 MB at 1,000,000 events.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

import asyncpg

from bench.common import Options, Row, create_schema, pg_dsn, scratch_database
from bench.seed import PER_STREAM, seed
from events import EventStore, create_engine
from projections import OAuthAccount, User, UserProjection
from projections.replay import replay

RSS_LIMIT_MB = 300.0
GOAL_RATIO = 0.3


async def child(url: str, jobs: int) -> dict[str, Any]:
    """Replay from this process (with `jobs` processes) and report the rate and the peak RSS
    of the largest process."""

    engine = create_engine(url)
    try:
        result = await replay(engine, UserProjection(User, OAuthAccount), jobs=jobs)
    finally:
        await engine.dispose()
    return {
        "events": result.events,
        "seconds": result.seconds,
        "users": result.users,
        "rate": result.rate,
        "peak_rss_mb": max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        / 1024,
    }


async def run(opts: Options) -> list[Row]:
    async with scratch_database(opts.database_url, "replay") as url:
        engine = create_engine(url)
        try:
            await create_schema(engine)
            t0 = time.perf_counter()
            n = await seed(EventStore(engine), opts.events)
            seeded = time.perf_counter() - t0
        finally:
            await engine.dispose()
        jobs = max(1, os.cpu_count() or 1)
        one = await _in_child(url, 1)
        many = await _in_child(url, jobs) if jobs > 1 else one
        copy_rate = await _copy_rate(url, n)
    rss = max(one["peak_rss_mb"], many["peak_rss_mb"])
    rss_goal = f"RSS < {RSS_LIMIT_MB:.0f} MB at 1M"
    rss_ok = rss < RSS_LIMIT_MB if n >= 1_000_000 else None
    note_n = (
        f"{n:,} events, {one['users']:,} users ({PER_STREAM} events each), seeded in {seeded:.0f}s"
    )

    def row(figure: str, found: dict[str, Any], how: str) -> Row:
        ratio = found["rate"] / copy_rate
        return Row(
            figure,
            found["rate"],
            copy_rate,
            unit="events/s",
            goal=f">= {GOAL_RATIO:g}x",
            ratio=ratio,
            ok=ratio >= GOAL_RATIO,
            note=f"{note_n}; {how}, replay {found['seconds']:.1f}s",
        )

    return [
        row(f"3a replay vs COPY of final rows, --jobs {jobs}", many, f"{jobs} processes"),
        row("3a same, one process", one, "--jobs 1"),
        Row(
            "3b replay peak RSS",
            rss,
            None,
            unit="MB",
            goal=rss_goal,
            ok=rss_ok,
            note=f"ru_maxrss of the largest replay process at {n:,} events"
            + ("" if n >= 1_000_000 else " (goal judged at --events 1000000)"),
        ),
    ]


async def _in_child(url: str, jobs: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.replay", url, str(jobs), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"replay child exited {proc.returncode}")
    found: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return found


async def _copy_rate(url: str, n_events: int) -> float:
    """Events per second if the final rows were simply COPYed in (best of two)."""
    conn = await asyncpg.connect(pg_dsn(url))
    try:
        rows = await conn.fetch('SELECT * FROM "user"')
        columns = list(rows[0].keys()) if rows else []
        records = [tuple(r.values()) for r in rows]
        best = float("inf")
        for _ in range(2):
            await conn.execute("DROP TABLE IF EXISTS user_copy")
            await conn.execute('CREATE TABLE user_copy (LIKE "user" INCLUDING ALL)')
            t0 = time.perf_counter()
            await conn.copy_records_to_table("user_copy", records=records, columns=columns)
            best = min(best, time.perf_counter() - t0)
        return n_events / best
    finally:
        await conn.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(child(sys.argv[1], int(sys.argv[2])))))
