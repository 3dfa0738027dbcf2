"""`registry keygen`, `registry rotate-master-key`, `registry encrypt-events`: master keys and
bringing the log under encryption."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from events import keyops
from events.keyops import Migration, Rotation
from events.keyring import MasterKey, MasterKeyError
from registry.bootstrap import running
from registry.cli.common import EXIT_USAGE, emit_json, fail, load_settings, run
from registry.schema import ensure_schema
from registry.service.keys import MASTER_KEY_VAR, PREVIOUS_KEYS_VAR, load_keyring, write_key_file
from registry.settings import Settings

Progress = Callable[[int, int], None]
T = TypeVar("T")


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A progress bar on stderr; yields the `on_progress(done, total)` callback."""
    bar = Bar(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _run_or_fail(what: str, go: Callable[[], Awaitable[T]]) -> T:
    try:
        return run(go)
    except MasterKeyError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 any failure ends as a message and exit 1
        fail(f"{what} failed: {exc}")


@click.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the key into this new file (mode 0600) instead of printing it.",
)
@click.option(
    "--keep-existing",
    is_flag=True,
    help="With --output: an existing key file is kept (exit 0) instead of an error; for "
    "deployments that make the key on first start.",
)
def keygen(output: Path | None, keep_existing: bool) -> None:
    """Make a new master key (32 random bytes, URL-safe base64) and print it.

    Set it as REGISTRY_MASTER_KEY in every process (or keep it in the file named by
    REGISTRY_MASTER_KEY_FILE). Keep it secret and backed up: without it, the personal data in
    the log cannot be read. To replace a key in use, see `registry rotate-master-key`."""

    key = MasterKey.generate()
    if output is not None:
        if not write_key_file(output, key):
            if keep_existing:
                click.echo(f"{output} exists already: kept", err=True)
                return
            fail(f"{output} exists already: not replaced", EXIT_USAGE)
        click.echo(f"master key {key.key_id} written to {output} (mode 0600)", err=True)
        click.echo(f"use it with REGISTRY_MASTER_KEY_FILE={output}", err=True)
        return
    click.echo(key.encoded())
    click.echo(
        f"master key {key.key_id}: set it as {MASTER_KEY_VAR} in every registry process; "
        "keep it secret and backed up",
        err=True,
    )


async def _rotate(settings: Settings, batch_size: int, on_progress: Progress) -> Rotation:
    keyring = load_keyring(settings, generate=False)
    # not started: a rotation re-wraps data keys with the keys given and seals nothing, and
    # must never make the embedded default's key file
    async with running(settings, encrypted=False) as container:
        return await keyops.rotate(
            container.engine, keyring, batch_size=batch_size, on_progress=on_progress
        )


@click.command("rotate-master-key")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def rotate_master_key(batch_size: int, as_json: bool) -> None:
    """Re-wrap every user's data key with the active master key, online.

    Run it with REGISTRY_MASTER_KEY set to the new key and REGISTRY_PREVIOUS_MASTER_KEYS to the
    old one(s), once every running process has both keys (see the README's rotation steps).
    Each batch commits on its own: an interrupted run resumes when run again. Afterwards the
    old key can be dropped everywhere; a process with only the old key refuses to start."""

    settings = load_settings()
    with progress_bar("re-wrapping data keys") as on_progress:
        result: Rotation = _run_or_fail(
            "rotation", lambda: _rotate(settings, batch_size, on_progress)
        )
    if as_json:
        emit_json({"master_key_id": result.key_id, "rewrapped": result.rewrapped})
        return
    click.echo(
        f"re-wrapped {result.rewrapped} data keys with master key {result.key_id}; every data "
        f"key is wrapped by it now: {PREVIOUS_KEYS_VAR} can be removed from every process"
    )


async def _encrypt(settings: Settings, batch_size: int, on_progress: Progress) -> Migration:
    async with running(settings) as container:
        crypto = await container.encrypt()  # started already: the Crypto it attached
        await ensure_schema(container.engine, container.user_table, container.oauth_table)
        return await keyops.encrypt_events(
            container.engine, crypto, batch_size=batch_size, on_progress=on_progress
        )


@click.command("encrypt-events")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def encrypt_events(batch_size: int, as_json: bool) -> None:
    """Seal the personal values of events stored before encryption was on.

    Migrates the schema first, then, one transaction per batch: gives each user without a data
    key one and moves the personal values of their clear events into the sealed column (the
    payload keeps "[erased]" placeholders). Erased users are skipped. Online, resumable (run it
    again after an interruption) and idempotent (a second run changes nothing)."""

    settings = load_settings()
    with progress_bar("sealing events") as on_progress:
        result: Migration = _run_or_fail(
            "encrypt-events", lambda: _encrypt(settings, batch_size, on_progress)
        )
    if as_json:
        emit_json(
            {
                "sealed": result.sealed,
                "keys_created": result.keys_created,
                "skipped_erased": result.skipped_erased,
                "scanned": result.scanned,
            }
        )
        return
    click.echo(
        f"sealed {result.sealed} events ({result.keys_created} new data keys); "
        f"{result.skipped_erased} events of erased users skipped; "
        f"{result.scanned} events stored in clear scanned"
        + ("" if result.sealed else ": nothing left to encrypt")
    )
