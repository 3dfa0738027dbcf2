"""What every `registry` command shares: failing with a message and an exit code, running a
coroutine, printing JSON, reading the settings."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import click

from registry.settings import Settings, get_settings

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"registry: error: {message}", err=True)
    sys.exit(code)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError or SettingsError: say which variable
        fail(f"invalid configuration: {exc}", EXIT_USAGE)


def with_models(settings: Settings, user_model: str | None, oauth_model: str | None) -> Settings:
    """`settings` with the --user-model / --oauth-model options given on the command line."""
    updates = {k: v for k, v in (("user_model", user_model), ("oauth_model", oauth_model)) if v}
    return settings.model_copy(update=updates) if updates else settings
