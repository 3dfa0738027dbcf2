"""What the `registry consume`, `send` and `asyncapi` commands do (the CLI stays thin)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any, Literal

from registry.settings import Settings

EXIT_ACCEPTED = 0
EXIT_REJECTED = 3
EXIT_TIMEOUT = 4


async def consume(settings: Settings, *, relay: bool = True) -> None:
    """Consume commands (and relay events) until SIGTERM or SIGINT."""
    from registry.bootstrap import build
    from registry.bus.app import running_bus

    container = build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await container.encrypt()  # a wrong or missing master key: nothing consumed or written
        async with running_bus(container, relay=relay):
            await stop.wait()
    finally:
        await container.aclose()


async def send(settings: Settings, name: str, payload: str, timeout: float) -> tuple[int, Any]:
    """Send one command; (exit code, reply as a dict). Raises `ReplyTimeoutError` on timeout."""
    from registry.bus.channels import Channels
    from registry.bus.client import send_command

    assert settings.broker_url
    reply = await send_command(
        settings.broker_url,
        name,
        payload,
        timeout=timeout,
        channels=Channels(settings.bus_prefix),
    )
    code = EXIT_ACCEPTED if reply.accepted else EXIT_REJECTED
    return code, reply.model_dump(mode="json", exclude_none=True)


def write_asyncapi(settings: Settings, output: Path | None, fmt: Literal["json", "yaml"]) -> str:
    from registry.bus.asyncapi import asyncapi_document
    from registry.bus.channels import Channels

    text = asyncapi_document(settings.broker_url, channels=Channels(settings.bus_prefix), fmt=fmt)
    if output is not None:
        output.write_text(text + ("" if text.endswith("\n") else "\n"))
    return text
