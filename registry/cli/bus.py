"""`registry consume`, `send` and `asyncapi`: the message bus."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any, Literal

import click

from registry.bootstrap import running
from registry.bus.app import running_bus
from registry.bus.asyncapi import asyncapi_document
from registry.bus.channels import Channels
from registry.bus.client import ReplyTimeoutError, send_command
from registry.cli.common import EXIT_USAGE, emit_json, fail, load_settings, run
from registry.domain.commands import COMMANDS
from registry.logs import configure_logging
from registry.settings import Settings

EXIT_ACCEPTED = 0
EXIT_REJECTED = 3
EXIT_TIMEOUT = 4


async def consume_commands(settings: Settings, *, relay: bool = True) -> None:
    """Consume commands (and relay events) until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # a wrong or missing master key: nothing consumed or written
    async with running(settings) as container, running_bus(container, relay=relay):
        await stop.wait()


async def send_command_and_wait(
    settings: Settings, name: str, payload: str, timeout: float
) -> tuple[int, dict[str, Any]]:
    """Send one command; (exit code, reply as a dict). Raises `ReplyTimeoutError` on timeout."""
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
    text = asyncapi_document(settings.broker_url, channels=Channels(settings.bus_prefix), fmt=fmt)
    if output is not None:
        output.write_text(text + ("" if text.endswith("\n") else "\n"))
    return text


@click.command()
@click.option("--no-relay", is_flag=True, help="Consume commands only; do not relay events.")
def consume(no_relay: bool) -> None:
    """Consume commands from the bus (REGISTRY_BROKER_URL) and relay committed events to
    <prefix>.events.<EventType>, until SIGTERM or Ctrl+C."""
    settings = load_settings()
    if not settings.broker_url:
        fail("no broker configured: set REGISTRY_BROKER_URL", EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run(lambda: consume_commands(settings, relay=not no_relay))
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"consumer failed: {exc}")


@click.command()
@click.argument("command")
@click.argument("payload")
@click.option("--timeout", type=float, default=None, help="Seconds [REGISTRY_REQUEST_TIMEOUT].")
def send(command: str, payload: str, timeout: float | None) -> None:
    """Send COMMAND (register, update, delete, erase, link-oauth, update-oauth) with a JSON
    PAYLOAD over the bus and print the reply as JSON.

    A command_id is added when the payload has none (printed in the reply; send it again to
    retry safely). Exit codes: 0 accepted, 3 rejected, 4 no reply in time, 1 bus error,
    2 usage error.
    """
    settings = load_settings()
    if not settings.broker_url:
        fail("no broker configured: set REGISTRY_BROKER_URL", EXIT_USAGE)
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}", EXIT_USAGE)
    wait = timeout if timeout is not None else settings.request_timeout
    try:
        code, reply = run(lambda: send_command_and_wait(settings, command, payload, wait))
    except ReplyTimeoutError as exc:
        fail(f"{exc} (is `registry consume` running?)", EXIT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"cannot send over {settings.broker_url.split('@')[-1]}: {exc}")
    emit_json(reply)
    sys.exit(code)


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--yaml", "as_yaml", is_flag=True, help="YAML instead of JSON.")
def asyncapi(output: Path | None, as_yaml: bool) -> None:
    """Write the AsyncAPI document of the bus channels (for REGISTRY_BROKER_URL's broker
    kind; NATS when unset) to --output or stdout."""
    settings = load_settings()
    text = write_asyncapi(settings, output, "yaml" if as_yaml else "json")
    if output is None:
        click.echo(text)
    else:
        click.echo(f"AsyncAPI document written to {output}", err=True)
