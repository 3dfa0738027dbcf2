"""`registry erase USER_ID`: erase a user's personal data (crypto-shredding) from the command
line, through the same command handlers as the bus and the adapter."""

from __future__ import annotations

import sys
import uuid

import click
from sqlalchemy import inspect

from events.tables import events
from registry.bootstrap import running
from registry.cli.common import EXIT_USAGE, emit_json, fail, load_settings, run
from registry.domain.commands import EraseUser
from registry.errors import RegistryError
from registry.schema import ensure_schema
from registry.service.handlers import Outcome
from registry.settings import Settings

#: the user does not exist (the same code `registry send` uses for a rejected command)
EXIT_REJECTED = 3


async def erase_user(settings: Settings, user_id: uuid.UUID) -> Outcome:
    """Carry out `EraseUser(user_id)` on the configured database. Raises `UserNotFoundError`
    for an unknown user, `MasterKeyError` for a wrong or missing master key (nothing written).

    When the read model is caught up with the user, their rows go in the same transaction;
    otherwise the projector removes them when it applies the `UserErased`."""
    async with running(settings) as container:  # a wrong or missing master key: nothing written
        async with container.engine.connect() as conn:
            found = await conn.run_sync(lambda c: inspect(c).has_table(events.name))
        if not found:  # a mistyped URL must not create an empty registry
            where = container.engine.url.render_as_string(hide_password=True)
            raise LookupError(f"no registry database at {where}")
        # an older schema (without the data key table) is brought up to date first
        await ensure_schema(container.engine, container.user_table, container.oauth_table)
        handlers = container.handlers()
        if handlers.inline_projection is None and handlers.own_projection is None:
            # the user's rows go with the erasure when the read model is caught up with them
            handlers.own_projection = container.projection()
        return await handlers.handle(EraseUser(user_id=user_id, actor="registry erase"))


@click.command()
@click.argument("user_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def erase(user_id: str, yes: bool, as_json: bool) -> None:
    """Erase USER_ID's personal data (the right to erasure). Cannot be undone.

    The user's data key is destroyed together with a UserErased event: their email, password
    hash, OAuth tokens and personal custom columns become unreadable everywhere in the log,
    their read-model rows and reservations go, and the address can be registered again.
    Their events stay (history shows them as erased). Erasing again changes nothing.
    Exit codes: 0 erased (or already erased), 3 no such user, 1 error, 2 usage error.
    """

    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        fail(f"not a user id (a UUID): {user_id!r}", EXIT_USAGE)
    settings = load_settings()
    if not yes:
        click.confirm(
            f"Erase every piece of personal data of user {uid}? This cannot be undone",
            abort=True,
            err=True,
        )
    try:
        outcome = run(lambda: erase_user(settings, uid))
    except RegistryError as exc:
        if as_json:
            emit_json(
                {
                    "status": "rejected",
                    "user_id": str(uid),
                    "code": exc.code,
                    "message": exc.message,
                }
            )
            sys.exit(EXIT_REJECTED)
        fail(exc.message, EXIT_REJECTED)
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"erase failed: {exc}")
    status = "erased" if outcome.events else "already_erased"
    if as_json:
        emit_json({"status": status, "user_id": str(uid), "version": outcome.version})
    elif outcome.events:
        click.echo(f"user {uid} erased (stream version {outcome.version})")
    else:
        click.echo(f"user {uid} was already erased; nothing changed")
