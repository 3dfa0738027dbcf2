"""What every figure shares: options, the result row, a scratch database, timed workloads."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from projections.tables import metadata as read_model_metadata
from registry.schema import target_metadata

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CALLERS = 8


@dataclass(frozen=True)
class Options:
    database_url: str = DEFAULT_URL
    quick: bool = False
    events: int = 200_000

    @property
    def seconds(self) -> float:
        """How long each side of a throughput figure runs, per round."""
        return 2.0 if self.quick else 6.0

    @property
    def rounds(self) -> int:
        """Rounds of (ours, baseline), alternated; the median of each side is reported."""
        return 1 if self.quick else 3


@dataclass
class Row:
    """One line of the table. `ours`/`baseline` are rates (higher is better) unless `unit`
    says otherwise; `ratio` is ours/baseline; `ok` whether the goal is met."""

    figure: str
    ours: float | None = None
    baseline: float | None = None
    unit: str = "ops/s"
    goal: str = ""
    ok: bool | None = None
    ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unavailable(figure: str, goal: str, reason: str) -> Row:
    return Row(figure, goal=goal, note=f"not available: {reason}")


def ratio_row(
    figure: str,
    ours: float,
    baseline: float,
    goal_ratio: float,
    *,
    unit: str = "ops/s",
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Row:
    ratio = ours / baseline if baseline else None
    return Row(
        figure,
        ours,
        baseline,
        unit=unit,
        goal=f">= {goal_ratio:g}x",
        ok=ratio is not None and ratio >= goal_ratio,
        ratio=ratio,
        note=note,
        extra=extra or {},
    )


# ---------------------------------------------------------------------- databases
def _admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def scratch_database(url: str, tag: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `url` (dropped afterwards): the figures never
    touch anyone else's data. Yields its SQLAlchemy URL."""
    name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_admin_dsn(url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_admin_dsn(url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def pg_dsn(url: str) -> str:
    return _admin_dsn(url)


async def create_schema(engine: AsyncEngine) -> None:
    """Every table the registry owns (log, write side, bookkeeping) and the default models'
    read model, as `create_all` would."""

    async with engine.begin() as conn:
        for md in [*target_metadata(), read_model_metadata]:
            await conn.run_sync(md.create_all)


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# ---------------------------------------------------------------------- workloads
async def throughput(
    op: Callable[[int], Awaitable[Any]], *, callers: int = CALLERS, seconds: float
) -> float:
    """Completed `op(caller)` calls per second with `callers` running at once for `seconds`."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await op(i)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return done / (time.perf_counter() - started)


async def side_by_side(
    ours: Callable[[int], Awaitable[Any]],
    baseline: Callable[[int], Awaitable[Any]],
    opts: Options,
    *,
    callers: int = CALLERS,
    warmup: float = 0.5,
    seconds: float | None = None,
) -> tuple[float, float]:
    """Median rates of `ours` and `baseline`, run alternately (A B A B ...) in this process,
    each for `seconds` per round (default `opts.seconds`)."""
    run_for = opts.seconds if seconds is None else seconds
    await throughput(ours, callers=callers, seconds=warmup)
    await throughput(baseline, callers=callers, seconds=warmup)
    a: list[float] = []
    b: list[float] = []
    for _ in range(opts.rounds):
        a.append(await throughput(ours, callers=callers, seconds=run_for))
        b.append(await throughput(baseline, callers=callers, seconds=run_for))
    return statistics.median(a), statistics.median(b)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
