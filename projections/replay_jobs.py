"""The bulk phase of a replay in several processes (`registry replay --jobs N`, PostgreSQL).

A replay spends its bulk phase in Python (decoding, folding, building rows), so one process is
one core. Shards are independent (a stream never spans two), so the shards still to do are
dealt out round-robin: this process takes the first share and N-1 forked processes the others,
each running the same share of work (`Replay.bulk_shards`) on its own connections. Every
flush commits its shards' progress rows with their rows, so a run that fails or is interrupted
resumes per shard, as with one process.

Forked, not spawned: a child inherits the projection as it was built (an app's own models
included) with nothing to pickle or import again. Nothing open crosses the fork: this process
closes its pooled connections first, and a child discards the (empty) pool it inherited, runs
its own event loop, and ends with `os._exit` (multiprocessing), never running the parent's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Coroutine
from multiprocessing.sharedctypes import Synchronized

from sqlalchemy.ext.asyncio import AsyncEngine

from projections.errors import ReplayError

#: how often this process adds the children's counts to the progress it reports (seconds)
POLL = 0.2

#: counts events read, a number at a time
Count = Callable[[int], None]
#: one process's share of the bulk phase: its shards, and how it counts the events it reads
RunShare = Callable[[list[int], Count], Coroutine[object, object, None]]


def deal(shards: list[int], jobs: int) -> list[list[int]]:
    """`shards` in at most `jobs` round-robin shares, none empty."""
    return [share for i in range(jobs) if (share := shards[i::jobs])]


async def bulk_in_processes(
    engine: AsyncEngine,
    run_share: RunShare,
    shards: list[int],
    *,
    jobs: int,
    report: Count,
) -> None:
    """Run `run_share` on `shards` dealt out to `jobs` processes (this one included), on
    `engine`'s connections; `report` receives the events read by all of them so far."""
    shares = deal(shards, jobs)
    ctx = multiprocessing.get_context("fork")
    counters: list[Synchronized[int]] = [ctx.Value("q", 0) for _ in shares[1:]]
    await engine.dispose()  # no pooled connection crosses the fork
    children = [
        ctx.Process(
            target=_child,
            args=(engine, run_share, share, counter),
            name=f"replay-bulk-{i}",
            daemon=True,
        )
        for i, (share, counter) in enumerate(zip(shares[1:], counters, strict=True), 1)
    ]
    for child in children:
        child.start()
    own = 0

    def total() -> None:
        report(own + sum(int(c.value) for c in counters))

    def count(n: int) -> None:
        nonlocal own
        own += n
        total()

    try:
        mine = asyncio.create_task(run_share(shares[0], count))
        while not mine.done():
            await asyncio.wait({mine}, timeout=POLL)
            total()
        await mine
        while any(c.is_alive() for c in children):
            await asyncio.sleep(POLL)
            total()
        failed = [c for c in children if c.exitcode != 0]
        if failed:
            codes = ", ".join(f"{c.name} exited {c.exitcode}" for c in failed)
            raise ReplayError(
                f"{len(failed)} of {len(children) + 1} replay processes failed ({codes}); "
                "run the replay again: it resumes from the shards already written"
            )
        total()
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # its open transaction rolls back; its shards are redone
            child.join()


def _child(
    engine: AsyncEngine, run_share: RunShare, share: list[int], counter: Synchronized[int]
) -> None:
    def count(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    async def main() -> None:
        # the pool inherited from the parent is empty (disposed before the fork): start anew
        # without touching it
        await engine.dispose(close=False)
        try:
            await run_share(share, count)
        finally:
            await engine.dispose()

    asyncio.run(main())


__all__ = ["bulk_in_processes", "deal"]
