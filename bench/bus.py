"""Figure 5: commands over NATS request/reply vs the same handlers called in-process.

Ours: `registry.bus.running_bus` consuming `RegisterUser` commands from a JetStream stream of
its own (a unique prefix, deleted afterwards) with the default 8 workers, in this process, as
`registry consume` runs; 8 callers send commands with `registry.bus.request` and wait for the
typed reply, either from a child process (another service: 5a) or from this same process
(5b, where the callers' client work also lands on the consumer's CPU). Baseline: the same
`CommandHandlers.handle` on the same command, called directly by 8 callers in this process.
Passwords arrive pre-hashed so neither side measures the password hasher. Goal >= 0.8x.

5a also breaks each command's way down (p50/p99 of the commands both ends saw, wall clock,
same machine): the client's publish until the stream's PubAck, the wait in the stream until
the consumer's fetch returned it, from the fetch to the start of its handling (workers'
turn on the event loop), the handling (body to typed reply, the handler included), the reply
from the consumer's publish to the client, and the whole round trip; beside the in-process
handler's own time per call. And the CPU each side spends per command: the consumer's
process, the client process, the local nats-server (shared with whoever else uses it), the
in-process baseline, and the in-process handlers given a `command_id` as every command on the
bus has one (its own, or the message's identity: its idempotency record is part of the
consumer's work), whose rate is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import nats

from bench.common import (
    CALLERS,
    Options,
    Row,
    create_schema,
    percentile,
    ratio_row,
    scratch_database,
    side_by_side,
    throughput,
    unavailable,
)
from registry.bootstrap import build
from registry.bus import Channels, create_broker, request, running_bus
from registry.bus.app import command_handlers
from registry.bus.nats_commands import ConsumerTiming, NatsRequester, RequestTiming
from registry.domain.commands import RegisterUser
from registry.settings import Settings

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
GOAL = 0.8


def _payload() -> bytes:
    email = f"bus-{uuid.uuid4().hex[:12]}@example.com"
    return json.dumps({"email": email, "hashed_password": "h" * 60}).encode()


async def _sender(
    prefix: str, observe: Callable[[RequestTiming], None] | None = None
) -> tuple[Any, Any]:
    channels = Channels(prefix)
    client = create_broker(NATS_URL)
    await client.connect()
    NatsRequester.for_broker(client).observe = observe

    async def over_nats(_: int) -> None:
        reply = await request(client, "register", _payload(), timeout=30, channels=channels)
        if not reply.accepted:
            raise RuntimeError(f"rejected: {reply}")

    return client, over_nats


async def client_process(prefix: str, seconds: float) -> dict[str, Any]:
    """The child: 8 callers over NATS for `seconds`; their rate and each request's times."""
    timings: list[RequestTiming] = []
    client, over_nats = await _sender(prefix, timings.append)
    try:
        cpu = time.process_time()
        rate = await throughput(over_nats, callers=CALLERS, seconds=seconds)
        cpu = time.process_time() - cpu
    finally:
        await client.stop()
    return {
        "rate": rate,
        "cpu": cpu,
        "timings": [[t.correlation_id, t.sent, t.acked, t.replied] for t in timings],
    }


async def _in_child(
    prefix: str, seconds: float, requests: list[RequestTiming], cpu: list[float] | None = None
) -> float:
    """The rate of 8 callers in a child process; their requests' times into `requests`, the
    child's CPU seconds while they ran into `cpu`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bus", prefix, str(seconds), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bus client exited {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    requests.extend(RequestTiming(*t) for t in result["timings"])
    if cpu is not None:
        cpu.append(result["cpu"])
    return float(result["rate"])


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
    }


def breakdown(
    requests: list[RequestTiming], consumed: list[ConsumerTiming], in_process: list[float]
) -> dict[str, Any]:
    """p50/p99 of each stage of the commands seen at both ends, and of the in-process call."""
    by_id = {c.correlation_id: c for c in consumed}
    pairs = [(r, by_id[r.correlation_id]) for r in requests if r.correlation_id in by_id]
    stages = {
        "publish_ack": [r.acked - r.sent for r, _ in pairs],
        "fetch_wait": [c.fetched - c.stored for _, c in pairs],
        "to_worker": [c.started - c.fetched for _, c in pairs],
        "handling": [c.handled - c.started for _, c in pairs],
        "reply": [r.replied - c.replied for r, c in pairs],
        "round_trip": [r.replied - r.sent for r, _ in pairs],
        "in_process_call": in_process,
    }
    return {"commands": len(pairs)} | {name: _ms(v) for name, v in stages.items()}


def _brief(stages: dict[str, Any]) -> str:
    names = ("publish_ack", "fetch_wait", "to_worker", "handling", "reply", "round_trip")
    parts = [f"{n} {stages[n]['p50_ms']:g}/{stages[n]['p99_ms']:g}" for n in names]
    call = stages["in_process_call"]
    cpu = ", ".join(f"{k} {v:g}" for k, v in stages["cpu_ms_per_command"].items())
    return (
        f"5a p50/p99 ms: {', '.join(parts)}; in-process call {call['p50_ms']:g}/"
        f"{call['p99_ms']:g}; in-process with a command_id "
        f"{stages['in_process_with_command_id_cmd_s']} cmd/s; CPU ms per command: {cpu}"
    )


def _nats_server_cpu() -> float:
    """CPU seconds the local nats-server has used (0 when there is none to read: not local,
    or not Linux); shared by everyone using that server."""
    total = 0.0
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "nats-server":
                        continue
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _cpu_now() -> dict[str, float]:
    here = time.process_time()
    return {
        "consumer": here,
        "in_process": here,
        "in_process_with_id": here,
        "nats_server": _nats_server_cpu(),
    }


@contextlib.contextmanager
def _cpu_per_command(
    into: dict[str, list[float]], names: tuple[str, ...]
) -> Iterator[Callable[[float], None]]:
    """CPU seconds per command over the block of this process (`consumer`, `in_process...`)
    and of the local nats-server (`nats_server`); the block calls the function it gets with
    its number of commands."""
    before = _cpu_now()
    commands: list[float] = []
    yield commands.append
    after = _cpu_now()
    if commands and commands[0]:
        for name in names:
            into.setdefault(name, []).append((after[name] - before[name]) / commands[0])


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

        calls: list[float] = []

        async def in_process(_: int) -> None:
            data = json.loads(_payload())
            started = time.perf_counter()
            await handlers.handle(RegisterUser(**data))
            calls.append(time.perf_counter() - started)

        async def in_process_with_id(_: int) -> None:
            # what the consumer runs: every command has an id (its own, or the message's)
            data = json.loads(_payload())
            await handlers.handle(RegisterUser(**data, command_id=str(uuid.uuid4())))

        requests: list[RequestTiming] = []
        consumed: list[ConsumerTiming] = []
        client = None
        try:
            async with running_bus(container, channels=channels, relay=False) as bus:
                # 5a: callers in another process, alternated with the in-process baseline
                await _in_child(prefix, 0.5, [])
                await throughput(in_process, seconds=0.5)
                calls.clear()
                bus.consumer.observe = consumed.append
                a: list[float] = []
                b: list[float] = []
                with_id: list[float] = []
                cpu: dict[str, list[float]] = {}
                for _ in range(opts.rounds):
                    client_cpu: list[float] = []
                    with _cpu_per_command(cpu, ("consumer", "nats_server")) as count:
                        a.append(await _in_child(prefix, opts.seconds, requests, client_cpu))
                        count(a[-1] * opts.seconds)
                    cpu.setdefault("client", []).append(client_cpu[0] / (a[-1] * opts.seconds))
                    with _cpu_per_command(cpu, ("in_process",)) as count:
                        b.append(await throughput(in_process, seconds=opts.seconds))
                        count(b[-1] * opts.seconds)
                    with _cpu_per_command(cpu, ("in_process_with_id",)) as count:
                        with_id.append(await throughput(in_process_with_id, seconds=opts.seconds))
                        count(with_id[-1] * opts.seconds)
                bus.consumer.observe = None
                stages = breakdown(requests, consumed, calls)
                stages["in_process_with_command_id_cmd_s"] = round(statistics.median(with_id))
                stages["cpu_ms_per_command"] = {
                    k: round(statistics.median(v) * 1000, 3) for k, v in cpu.items()
                }
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
            note=f"{note}; callers in another process; {_brief(stages)}",
            extra={"stages": stages},
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
    print(json.dumps(asyncio.run(client_process(sys.argv[1], float(sys.argv[2])))))
