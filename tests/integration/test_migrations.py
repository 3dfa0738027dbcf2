"""The Alembic migrations create exactly the tables the code declares, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import projections  # noqa: F401  (registers the default read-model tables)
from registry.schema import (
    RegistryMissingError,
    alembic_config,
    current_revision,
    head_revision,
    include_object,
    migrate,
    registry_table_names,
    target_metadata,
)
from registry.service.operations import gather_status
from registry.settings import Settings


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert await current_revision(engine) == head_revision()

    def diff(sync_conn: Connection) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # expression indexes are not reflected
            # a list of MetaData, as env.py's target_metadata: Alembic takes it here too, though
            # its annotation names one
            metadata: Any = target_metadata()
            return list(compare_metadata(MigrationContext.configure(sync_conn), metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"events", "event_master_key", "projection_checkpoints"} <= names
    assert {"registry_email_reservations", "registry_processed_commands"} <= names
    # the read model belongs to the app's models, never to the registry's migrations
    assert not names & {"user", "oauth_account"}


def test_include_object_keeps_an_apps_autogenerate_off_the_registrys_tables() -> None:
    owned = registry_table_names()
    assert {"events", "event_data_keys", "registry_processed_commands"} <= owned
    assert "projection_checkpoints" in owned
    assert "alembic_version" in owned
    assert "user" not in owned
    assert "oauth_account" not in owned
    events = Table("events", MetaData(), Column("position", Integer, index=True))
    assert not include_object(events, "events", "table", True, None)  # never "drop events"
    index = next(iter(events.indexes))
    assert not include_object(index, index.name, "index", True, None)
    assert include_object(None, "user", "table", True, None)
    assert include_object(None, "invoices", "table", False, None)


async def test_migrate_twice_is_a_no_op_and_downgrade_works(engine: AsyncEngine) -> None:
    await migrate(engine)
    await migrate(engine)
    assert await current_revision(engine) == head_revision()

    def down(sync_conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "base")

    async with engine.begin() as conn:
        await conn.run_sync(down)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert names <= {"alembic_version"}


def test_registry_migrate_command(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REGISTRY_DATABASE_URL": database_url}
    out = subprocess.run(
        [sys.executable, "-m", "registry.cli", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"database at revision {head_revision()}" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "registry.cli", "migrate"],
        env={**os.environ, "REGISTRY_DATABASE_URL": "mysql://nope"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "registry: error:" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_status_where_there_is_no_registry_says_what_to_run_and_creates_nothing(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    out = subprocess.run(
        [sys.executable, "-m", "registry.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "there is no registry at" in out.stderr
    assert "registry migrate" in out.stderr
    assert "Traceback" not in out.stderr
    assert "no such table" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no empty registry.db left behind


async def test_status_of_a_postgresql_database_without_a_registry(pg_url: str) -> None:
    with pytest.raises(RegistryMissingError, match=r"no events table.*registry migrate"):
        await gather_status(Settings(database_url=pg_url))
