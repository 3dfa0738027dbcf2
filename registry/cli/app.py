"""The `registry` command group. Each command family lives in its own module of this package
and is imported only when one of its commands runs: importing every family (the API server,
the brokers, Alembic, rich) costs about twice the start-up of a command such as `status`."""

from __future__ import annotations

import importlib

import click

#: command name → "module:attribute" in this package
COMMANDS = {
    "migrate": "data:migrate",
    "status": "data:status",
    "import-users": "data:import_users",
    "serve": "serve:serve",
    "consume": "bus:consume",
    "send": "bus:send",
    "asyncapi": "bus:asyncapi",
    "worker": "workers:worker",
    "replay": "workers:replay",
    "keygen": "keys:keygen",
    "rotate-master-key": "keys:rotate_master_key",
    "encrypt-events": "keys:encrypt_events",
    "erase": "erase:erase",
    "projections": "projections:projections",
}


class LazyGroup(click.Group):
    """A group that imports a command's module when the command is looked up (click's
    documented pattern for lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command = getattr(importlib.import_module(f"registry.cli.{module_name}"), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastapi-users-eventsourced", prog_name="registry")
def main() -> None:
    """An event-sourced user registry for FastAPI Users.

    Configuration comes from REGISTRY_* environment variables; with none set, everything runs
    on SQLite in ./registry.db.
    """
