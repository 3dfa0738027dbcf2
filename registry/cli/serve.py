"""`registry serve`: the read API, an in-process projector and the bus consumer."""

from __future__ import annotations

import sys

import click

from registry.api.serve import echo_stdout, run_server
from registry.cli.common import fail, load_settings


@click.command()
@click.option("--host", default=None, help="Interface to listen on [REGISTRY_HOST, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [REGISTRY_PORT, 8000; 0: any free].")
def serve(host: str | None, port: int | None) -> None:
    """Serve the read API, with an in-process projector and, when REGISTRY_BROKER_URL is set,
    the bus command consumer.

    Migrates the database first. With no configuration it runs on SQLite in ./registry.db,
    on 127.0.0.1:8000, and generates an API token kept in ./.registry-token (mode 0600).
    SIGTERM or Ctrl+C shuts it down cleanly (exit 0).
    """
    settings = load_settings()
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        code = run_server(settings, echo_stdout)
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"serve failed: {exc}")
    sys.exit(code)
