"""Figure 5: commands over NATS request/reply vs the same handlers called in-process.

Ours: `registry.bus.running_bus` consuming `RegisterUser` commands from a JetStream stream of
its own (a unique prefix, deleted afterwards) with the default 8 workers, in this process, as
`registry consume` runs; 8 callers send commands with `registry.bus.request` and wait for the
typed reply, either from a child process (another service: 5a) or from this same process
(5b, where the callers' client work also lands on the consumer's CPU). Baseline: the same
`CommandHandlers.handle` on the same command, called directly by 8 callers in this process.
Passwords arrive pre-hashed so neither side measures the password hasher. Goal >= 0.8x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

import nats

from bench.common import (
    CALLERS,
    Options,
    Row,
    create_schema,
    ratio_row,
    scratch_database,
    side_by_side,
    throughput,
    unavailable,
)
from registry.bootstrap import build
from registry.bus import Channels, create_broker, request, running_bus
from registry.bus.app import command_handlers
from registry.domain.commands import RegisterUser
from registry.settings import Settings

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
GOAL = 0.8


def _payload() -> bytes:
    email = f"bus-{uuid.uuid4().hex[:12]}@example.com"
    return json.dumps({"email": email, "hashed_password": "h" * 60}).encode()


async def _sender(prefix: str) -> tuple[Any, Any]:
    channels = Channels(prefix)
    client = create_broker(NATS_URL)
    await client.connect()

    async def over_nats(_: int) -> None:
        reply = await request(client, "register", _payload(), timeout=30, channels=channels)
        if not reply.accepted:
            raise RuntimeError(f"rejected: {reply}")

    return client, over_nats


async def client_process(prefix: str, seconds: float) -> float:
    """The child: 8 callers over NATS for `seconds`; their rate."""
    client, over_nats = await _sender(prefix)
    try:
        return await throughput(over_nats, callers=CALLERS, seconds=seconds)
    finally:
        await client.stop()


async def _in_child(prefix: str, seconds: float) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bus", prefix, str(seconds), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bus client exited {proc.returncode}")
    return float(out.decode().strip().splitlines()[-1])


async def _reachable(url: str, timeout: float = 3.0) -> str | None:
    """Why the NATS server at `url` does not answer, or None (nats-py itself would keep
    reconnecting for minutes)."""

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"NATS at {host}:{port} does not answer ({exc or type(exc).__name__})"
    writer.close()
    return None


async def run(opts: Options) -> list[Row]:
    problem = await _reachable(NATS_URL)
    if problem is not None:
        return [
            unavailable("5a commands over NATS vs in-process handlers", f">= {GOAL:g}x", problem)
        ]

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    channels = Channels(prefix)
    async with scratch_database(opts.database_url, "bus") as url:
        container = build(Settings(database_url=url, broker_url=NATS_URL, bus_prefix=prefix))
        await create_schema(container.engine)
        handlers = command_handlers(container)

        async def in_process(_: int) -> None:
            data = json.loads(_payload())
            await handlers.handle(RegisterUser(**data))

        client = None
        try:
            async with running_bus(container, channels=channels, relay=False):
                # 5a: callers in another process, alternated with the in-process baseline
                await _in_child(prefix, 0.5)
                await throughput(in_process, seconds=0.5)
                a: list[float] = []
                b: list[float] = []
                for _ in range(opts.rounds):
                    a.append(await _in_child(prefix, opts.seconds))
                    b.append(await throughput(in_process, seconds=opts.seconds))
                # 5b: callers in this process
                client, over_nats = await _sender(prefix)
                c, d = await side_by_side(over_nats, in_process, opts)
        finally:
            if client is not None:
                await client.stop()
            # the consumer declares the command stream, the event publisher the event stream
            for stream in (channels.nats_command_stream, channels.nats_event_stream):
                await _delete_stream(stream)
            await container.aclose()
    note = "RegisterUser, JetStream request/reply, 8 callers, 8 consumer workers"
    return [
        ratio_row(
            "5a commands over NATS vs in-process handlers",
            statistics.median(a),
            statistics.median(b),
            GOAL,
            unit="cmd/s",
            note=f"{note}; callers in another process",
        ),
        ratio_row(
            "5b same, callers in the consumer's process",
            c,
            d,
            GOAL,
            unit="cmd/s",
            note=f"{note}; the client's CPU shares the consumer's process",
        ),
    ]


async def _delete_stream(name: str) -> None:
    with contextlib.suppress(Exception):
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()


if __name__ == "__main__":
    print(asyncio.run(client_process(sys.argv[1], float(sys.argv[2]))))
