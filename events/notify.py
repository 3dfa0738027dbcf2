"""Wake-ups: an in-process broadcast signal, and PostgreSQL LISTEN on a dedicated connection.

A notification is only a hint that something changed (NOTIFY is delivered at COMMIT and lost
while disconnected): whoever wakes up always catches up from its stored checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import asyncpg

log = logging.getLogger("registry.notify")


class Wakeup:
    """A broadcast signal: every task waiting when `notify()` is called wakes up."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait for the next notify; False when `timeout` seconds passed first."""
        event = self._event
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel on 3.11
                await event.wait()
        except TimeoutError:
            return False
        return True


class Fanout(Wakeup):
    """A signal that wakes other signals (nobody waits on it)."""

    def __init__(self, *also: Wakeup) -> None:
        super().__init__()
        self.also = also

    def notify(self) -> None:
        for wakeup in self.also:
            wakeup.notify()


class PgListener:
    """LISTEN on some channels over one asyncpg connection kept out of the pool.

    Each notification on a channel calls `notify()` on that channel's `Wakeup`. When the
    connection drops it reconnects with backoff and wakes everyone, so that they catch up.
    """

    def __init__(self, dsn: str, channels: Mapping[str, Wakeup]) -> None:
        self.dsn = dsn
        self.channels = dict(channels)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _wake_all(self) -> None:
        for wakeup in self.channels.values():
            wakeup.notify()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("listen connection failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                conn.add_termination_listener(lambda _c, _lost=lost: _lost.set())
                for channel, wakeup in self.channels.items():
                    await conn.add_listener(
                        channel,
                        lambda *_a, _w=wakeup: _w.notify(),
                    )
                self.connected.set()
                self._wake_all()  # anything committed while we were away
                await lost.wait()
                log.warning("listen connection lost; reconnecting")
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.asynccontextmanager
async def pg_listening(dsn: str, channels: Mapping[str, Wakeup]) -> AsyncIterator[PgListener]:
    listener = PgListener(dsn, channels)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()
