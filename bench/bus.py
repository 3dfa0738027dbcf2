"""Figure 5: commands over NATS request/reply vs the same handlers called in-process.

Ours: `registry.bus.running_bus` consuming `RegisterUser` commands from a JetStream stream of
its own (a unique prefix, deleted afterwards) with the default 8 workers, and 8 callers in
this process sending them with `registry.bus.request` and waiting for the typed reply.
Baseline: the same `CommandHandlers.handle` on the same command, called directly by 8 callers.
Passwords arrive pre-hashed so neither side measures the password hasher. Goal >= 0.8x.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid

from bench.common import Options, Row, create_schema, ratio_row, scratch_database, side_by_side

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
GOAL = 0.8


async def run(opts: Options) -> list[Row]:
    from registry.bootstrap import build
    from registry.bus import Channels, create_broker, request, running_bus
    from registry.bus.app import command_handlers
    from registry.commands import RegisterUser
    from registry.settings import Settings

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    channels = Channels(prefix)
    n = 0

    def payload() -> dict[str, str]:
        nonlocal n
        n += 1
        return {"email": f"bus{n}-{uuid.uuid4().hex[:6]}@example.com", "hashed_password": "h" * 60}

    async with scratch_database(opts.database_url, "bus") as url:
        container = build(Settings(database_url=url, broker_url=NATS_URL, bus_prefix=prefix))
        await create_schema(container.engine)
        handlers = command_handlers(container)
        client = create_broker(NATS_URL)
        try:
            async with running_bus(container, channels=channels, relay=False):
                await client.connect()

                async def over_nats(_: int) -> None:
                    reply = await request(
                        client,
                        "register",
                        json.dumps(payload()).encode(),
                        timeout=30,
                        channels=channels,
                    )
                    if not reply.accepted:
                        raise RuntimeError(f"rejected: {reply}")

                async def in_process(_: int) -> None:
                    await handlers.handle(RegisterUser(**payload()))

                a, b = await side_by_side(over_nats, in_process, opts)
        finally:
            await client.stop()
            await _delete_stream(channels.nats_command_stream)
            await container.aclose()
    return [
        ratio_row(
            "5 commands over NATS vs in-process handlers",
            a,
            b,
            GOAL,
            unit="cmd/s",
            note="RegisterUser, JetStream request/reply, 8 callers, 8 consumer workers",
        )
    ]


async def _delete_stream(name: str) -> None:
    import nats

    with contextlib.suppress(Exception):
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()
