"""`registry migrate`, `status` and `import-users`: the database as a whole."""

from __future__ import annotations

import sys

import click

from registry.bootstrap import database
from registry.cli.common import EXIT_ERROR, emit_json, fail, load_settings, run
from registry.schema import RegistryMissingError, current_revision
from registry.schema import migrate as do_migrate
from registry.service.importer import ImportSourceError, run_import
from registry.service.operations import gather_status


@click.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(revision: str) -> None:
    """Bring the database schema to the current version (Alembic)."""
    settings = load_settings()

    async def go() -> str | None:
        async with database(settings) as engine:
            await do_migrate(engine, revision)
            return await current_revision(engine)

    try:
        current = run(go)
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"migration failed: {exc}")
    click.echo(f"database at revision {current}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(as_json: bool) -> None:
    """Event count, head position, and each projection's checkpoint and lag."""
    settings = load_settings()
    try:
        report = run(lambda: gather_status(settings))
    except RegistryMissingError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
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


@click.command("import-users")
@click.option("--from", "source", required=True, metavar="URL", help="The old app's database.")
@click.option("--user-table", default="user", show_default=True)
@click.option("--oauth-table", default="oauth_account", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def import_users(source: str, user_table: str, oauth_table: str, as_json: bool) -> None:
    """Move a FastAPI Users database (user, oauth_account) into the event log.

    One UserRegistered / OAuthAccountLinked per row, ids and password hashes kept, marked
    imported; running it again imports nothing twice.
    """
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
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
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
