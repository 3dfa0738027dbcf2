"""The `registry` command line. Each command parses, calls one operation, shapes the output.

Errors go to stderr with a non-zero exit code; `--json` prints data for machines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from registry.settings import Settings, get_settings

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"registry: error: {message}", err=True)
    sys.exit(code)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except KeyboardInterrupt:
        sys.exit(130)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def load_settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: say which variable is wrong
        fail(f"invalid configuration: {exc}", EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastapi-users-eventsourced", prog_name="registry")
def main() -> None:
    """An event-sourced user registry for FastAPI Users.

    Configuration comes from REGISTRY_* environment variables; with none set, everything runs
    on SQLite in ./registry.db.
    """


@main.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(revision: str) -> None:
    """Bring the database schema to the current version (Alembic)."""
    from events import create_engine
    from registry.schema import current_revision
    from registry.schema import migrate as do_migrate

    settings = load_settings()

    async def go() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await do_migrate(engine, revision)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    try:
        current = run(go)
    except Exception as exc:
        fail(f"migration failed: {exc}")
    click.echo(f"database at revision {current}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(as_json: bool) -> None:
    """Event count, head position, and each projection's checkpoint and lag."""
    from registry.ops import gather_status
    from registry.schema import RegistryMissingError

    settings = load_settings()
    try:
        report = run(lambda: gather_status(settings))
    except RegistryMissingError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot read status from {settings.database_url}: {exc}")
    if as_json:
        emit_json(report)
        return
    click.echo(f"events:        {report['events']['count']}")
    click.echo(f"head position: {report['events']['head_position']}")
    for proj in report.get("projections", []):
        click.echo(
            f"projection {proj['name']} partition {proj['partition']}: "
            f"checkpoint {proj['position']}, lag {proj['lag_events']} events"
            + (f", {proj['lag_seconds']:.1f}s" if proj.get("lag_seconds") is not None else "")
            + (f", lease held by {proj['holder']}" if proj.get("holder") else "")
        )
        failure = proj.get("failure")
        if failure:
            click.echo(
                f"  FAILED at position {failure['position']} ({failure['event_type']} of "
                f"stream {failure['stream_id']} v{failure['stream_version']}) after "
                f"{failure['attempts']} attempts, {failure['failed_at']}: {failure['reason']}"
            )
            click.echo(
                f"  then: registry projections retry {proj['name']} --partition "
                f"{proj['partition']}, or skip --position {failure['position']}"
            )
    for s in report.get("skipped", []):
        click.echo(
            f"skipped: projection {s['name']} partition {s['partition']} position "
            f"{s['position']} ({s['event_type']} of stream {s['stream_id']} "
            f"v{s['stream_version']}) by {s['skipped_by']} at {s['skipped_at']}: {s['note']}"
        )


@main.command()
@click.option("--host", default=None, help="Interface to listen on [REGISTRY_HOST, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [REGISTRY_PORT, 8000; 0: any free].")
def serve(host: str | None, port: int | None) -> None:
    """Serve the read API, with an in-process projector and, when REGISTRY_BROKER_URL is set,
    the bus command consumer.

    Migrates the database first. With no configuration it runs on SQLite in ./registry.db,
    on 127.0.0.1:8000, and generates an API token kept in ./.registry-token (mode 0600).
    SIGTERM or Ctrl+C shuts it down cleanly (exit 0).
    """
    from registry.api.serve import echo_stdout, run_server

    settings = load_settings()
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        code = run_server(settings, echo_stdout)
    except Exception as exc:
        fail(f"serve failed: {exc}")
    sys.exit(code)


@main.command("import-users")
@click.option("--from", "source", required=True, metavar="URL", help="The old app's database.")
@click.option("--user-table", default="user", show_default=True)
@click.option("--oauth-table", default="oauth_account", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def import_users(source: str, user_table: str, oauth_table: str, as_json: bool) -> None:
    """Move a FastAPI Users database (user, oauth_account) into the event log.

    One UserRegistered / OAuthAccountLinked per row, ids and password hashes kept, marked
    imported; running it again imports nothing twice.
    """
    from registry.importer import ImportSourceError, run_import

    settings = load_settings()

    def progress(table: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            click.echo(f"{table}: {done}/{total}", err=True)

    try:
        summary = run(
            lambda: run_import(
                settings,
                source,
                user_table=user_table,
                oauth_table=oauth_table,
                progress=progress,
            )
        )
    except ImportSourceError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"import failed: {exc}")
    if as_json:
        emit_json(summary.as_dict())
    else:
        for name, counts in (("users", summary.users), ("oauth accounts", summary.oauth_accounts)):
            click.echo(
                f"{name}: {counts.imported} imported, {counts.already} already imported, "
                f"{counts.failed} refused (of {counts.total})"
            )
        for failure in summary.failures:
            click.echo(
                f"refused {failure['table']} {failure['id']}: {failure['code']} "
                f"{failure['message']}",
                err=True,
            )
    if summary.failures:
        sys.exit(EXIT_ERROR)


@main.command()
@click.option("--no-relay", is_flag=True, help="Consume commands only; do not relay events.")
def consume(no_relay: bool) -> None:
    """Consume commands from the bus (REGISTRY_BROKER_URL) and relay committed events to
    <prefix>.events.<EventType>, until SIGTERM or Ctrl+C."""
    from registry.bus.commands import consume as do_consume
    from registry.logs import configure_logging

    settings = load_settings()
    if not settings.broker_url:
        fail("no broker configured: set REGISTRY_BROKER_URL", EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run(lambda: do_consume(settings, relay=not no_relay))
    except Exception as exc:
        fail(f"consumer failed: {exc}")


@main.command()
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
    from registry.bus.client import ReplyTimeoutError
    from registry.bus.commands import EXIT_TIMEOUT
    from registry.bus.commands import send as do_send
    from registry.commands import COMMANDS

    settings = load_settings()
    if not settings.broker_url:
        fail("no broker configured: set REGISTRY_BROKER_URL", EXIT_USAGE)
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}", EXIT_USAGE)
    wait = timeout if timeout is not None else settings.request_timeout
    try:
        code, reply = run(lambda: do_send(settings, command, payload, wait))
    except ReplyTimeoutError as exc:
        fail(f"{exc} (is `registry consume` running?)", EXIT_TIMEOUT)
    except Exception as exc:
        fail(f"cannot send over {settings.broker_url.split('@')[-1]}: {exc}")
    emit_json(reply)
    sys.exit(code)


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--yaml", "as_yaml", is_flag=True, help="YAML instead of JSON.")
def asyncapi(output: Path | None, as_yaml: bool) -> None:
    """Write the AsyncAPI document of the bus channels (for REGISTRY_BROKER_URL's broker
    kind; NATS when unset) to --output or stdout."""
    from registry.bus.commands import write_asyncapi

    settings = load_settings()
    text = write_asyncapi(settings, output, "yaml" if as_yaml else "json")
    if output is None:
        click.echo(text)
    else:
        click.echo(f"AsyncAPI document written to {output}", err=True)


def _with_models(settings: Settings, user_model: str | None, oauth_model: str | None) -> Settings:
    updates = {k: v for k, v in (("user_model", user_model), ("oauth_model", oauth_model)) if v}
    return settings.model_copy(update=updates) if updates else settings


@main.command()
@click.option("--user-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_USER_MODEL]")
@click.option("--oauth-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_OAUTH_MODEL]")
@click.option("--no-migrate", is_flag=True, help="Do not create missing tables first.")
def worker(user_model: str | None, oauth_model: str | None, no_migrate: bool) -> None:
    """Run a projector worker until SIGTERM or Ctrl+C. Run several: they share the
    partitions (REGISTRY_PROJECTION_PARTITIONS) and take over from one that dies."""
    from registry.lifespan import run_worker
    from registry.logs import configure_logging

    settings = _with_models(load_settings(), user_model, oauth_model)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run(lambda: run_worker(settings, migrate=not no_migrate))
    except Exception as exc:
        fail(f"worker failed: {exc}")


@main.command()
@click.argument("projection", default="users")
@click.option("--in-place", is_flag=True, help="Rebuild the live tables (offline: no workers).")
@click.option("--abandon", is_flag=True, help="Drop an interrupted replay's tables and stop.")
@click.option("--batch-size", type=int, default=10_000, show_default=True)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes that share the bulk phase (PostgreSQL; about one core each).",
)
@click.option("--user-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_USER_MODEL]")
@click.option("--oauth-model", default=None, metavar="MOD:CLASS", help="[REGISTRY_OAUTH_MODEL]")
def replay(
    projection: str,
    in_place: bool,
    abandon: bool,
    batch_size: int,
    jobs: int,
    user_model: str | None,
    oauth_model: str | None,
) -> None:
    """Rebuild PROJECTION from the log into new tables while the live ones keep serving, then
    swap them in atomically (blue/green). An interrupted replay resumes when run again."""
    from registry.lifespan import run_replay

    if projection != "users":
        fail(f"unknown projection {projection!r} (known: users)", EXIT_USAGE)
    settings = _with_models(load_settings(), user_model, oauth_model)
    try:
        message = run(
            lambda: run_replay(
                settings, in_place=in_place, abandon=abandon, batch_size=batch_size, jobs=jobs
            )
        )
    except Exception as exc:
        fail(f"replay failed: {exc}")
    click.echo(message)


from registry.cli_keys import register as _register_key_commands  # noqa: E402

_register_key_commands(main)

from registry.cli_erase import register as _register_erase  # noqa: E402

_register_erase(main)

from registry.cli_projections import register as _register_projections  # noqa: E402

_register_projections(main)

if __name__ == "__main__":  # pragma: no cover
    main()
