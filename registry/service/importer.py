"""Move an existing FastAPI Users database into the event log.

The source is what `fastapi-users-db-sqlalchemy` writes: a `user` table (id, email,
hashed_password, is_active, is_superuser, is_verified, and the app's own columns) and optionally
an `oauth_account` table. Every row becomes a command through the same `CommandHandlers` as
every other write (one write path): `RegisterUser` per user (id and password hash kept, custom
columns as the profile), `LinkOAuthAccount` per OAuth account, each with a `command_id` derived
from the source row, so running the import again appends nothing twice. The events carry
`imported` metadata. The read model fills in when a projector runs (`registry serve`,
`registry worker`, or the app's `run_projector`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr, ValidationError

from events import normalise_url
from registry.bootstrap import running
from registry.domain.commands import Command, LinkOAuthAccount, RegisterUser
from registry.errors import InvalidCommandError, RegistryError
from registry.schema import migrate
from registry.service.handlers import Outcome
from registry.service.import_source import (
    USER_BASE_COLUMNS,
    ImportSourceError,
    as_uuid,
    count,
    json_value,
    pages,
    reflect,
    source_engine,
)
from registry.settings import Settings

__all__ = ["Counts", "ImportSourceError", "ImportSummary", "import_users", "run_import"]

ACTOR = "registry import-users"


class Handles(Protocol):
    async def handle(self, command: Command, *, imported: bool = False) -> Outcome: ...


@dataclass
class Counts:
    total: int = 0
    imported: int = 0
    already: int = 0  # appended by an earlier run (same command_id)
    failed: int = 0


@dataclass
class ImportSummary:
    source: str
    users: Counts = field(default_factory=Counts)
    oauth_accounts: Counts = field(default_factory=Counts)
    #: rows the handlers refused: {"table", "id", "code", "message"}
    failures: list[dict[str, str]] = field(default_factory=list)
    profile_columns: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: (table, done, total) after each row
Progress = Callable[[str, int, int], None]


def command_id(table: str, row_id: uuid.UUID) -> str:
    """The idempotency key of one source row: the same row is imported once."""
    return f"import:{table}:{row_id}"


def register_command(row: Mapping[str, Any], profile_columns: list[str]) -> RegisterUser:
    user_id = as_uuid(row["id"], "user")
    return RegisterUser(
        command_id=command_id("user", user_id),
        actor=ACTOR,
        user_id=user_id,
        email=row["email"],
        hashed_password=row["hashed_password"],
        is_active=bool(row["is_active"]),
        is_superuser=bool(row["is_superuser"]),
        is_verified=bool(row["is_verified"]),
        profile={name: json_value(row[name]) for name in profile_columns},
    )


def link_command(row: Mapping[str, Any]) -> LinkOAuthAccount:
    account_id = as_uuid(row["id"], "oauth_account")
    refresh = row["refresh_token"]
    return LinkOAuthAccount(
        command_id=command_id("oauth_account", account_id),
        actor=ACTOR,
        user_id=as_uuid(row["user_id"], "oauth_account.user_id"),
        oauth_account_id=account_id,
        oauth_name=row["oauth_name"],
        access_token=SecretStr(row["access_token"]),
        expires_at=row["expires_at"],
        refresh_token=SecretStr(refresh) if refresh is not None else None,
        account_id=row["account_id"],
        account_email=row["account_email"],
    )


async def _run(
    handlers: Handles,
    commands: Callable[[Mapping[str, Any]], Command],
    rows: AsyncIterator[Mapping[str, Any]],
    table: str,
    counts: Counts,
    summary: ImportSummary,
    progress: Progress | None,
) -> None:
    done = 0
    async for row in rows:
        done += 1
        try:
            outcome = await handlers.handle(commands(row), imported=True)
        except ImportSourceError:
            raise
        except ValidationError as exc:
            counts.failed += 1
            summary.failures.append(
                {
                    "table": table,
                    "id": str(row["id"]),
                    "code": InvalidCommandError.code,
                    "message": _first_error(exc),
                }
            )
        except RegistryError as exc:
            counts.failed += 1
            summary.failures.append(
                {"table": table, "id": str(row["id"]), "code": exc.code, "message": str(exc)}
            )
        else:
            if getattr(outcome, "duplicate", False):
                counts.already += 1
            else:
                counts.imported += 1
        if progress is not None:
            progress(table, done, counts.total)


async def import_users(
    source_url: str,
    handlers: Handles,
    *,
    user_table: str = "user",
    oauth_table: str = "oauth_account",
    progress: Progress | None = None,
) -> ImportSummary:
    """Import every user (then every OAuth account) of the FastAPI Users database at
    `source_url` through `handlers`. Rows the handlers refuse (e.g. two source rows whose
    emails differ only in letter case) are listed in `failures`; the rest still import.

    Raises ImportSourceError when the source has no user table or non-UUID ids.
    """
    started = time.monotonic()
    summary = ImportSummary(source=normalise_url(source_url).render_as_string(True))
    source = source_engine(source_url)
    try:
        async with source.connect() as conn:
            meta = await reflect(conn, user_table, oauth_table)
            if user_table not in meta.tables:
                raise ImportSourceError(f"the source database has no {user_table!r} table")
            users = meta.tables[user_table]
            missing = USER_BASE_COLUMNS - set(users.c.keys())
            if missing:
                raise ImportSourceError(
                    f"table {user_table!r} is not a FastAPI Users table: no {sorted(missing)}"
                )
            summary.profile_columns = [c.key for c in users.c if c.key not in USER_BASE_COLUMNS]
            oauth = meta.tables.get(oauth_table)
            summary.users.total = await count(conn, users)
            if oauth is not None:
                summary.oauth_accounts.total = await count(conn, oauth)
            await _run(
                handlers,
                lambda row: register_command(row, summary.profile_columns),
                pages(conn, users),
                user_table,
                summary.users,
                summary,
                progress,
            )
            if oauth is not None:
                await _run(
                    handlers,
                    link_command,
                    pages(conn, oauth),
                    oauth_table,
                    summary.oauth_accounts,
                    summary,
                    progress,
                )
    finally:
        await source.dispose()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"


async def run_import(
    settings: Settings,
    source_url: str,
    *,
    user_table: str = "user",
    oauth_table: str = "oauth_account",
    progress: Progress | None = None,
) -> ImportSummary:
    """`registry import-users`: import into the registry at `settings.database_url`, creating
    the registry's tables there when missing (Alembic). With REGISTRY_USER_MODEL set, custom
    columns are checked against that model (a source column it lacks is refused row by row)."""
    target = normalise_url(settings.database_url)
    if target == normalise_url(source_url):
        raise ImportSourceError(
            "the source is the registry's own database: import from the old app's database "
            "into a new one (REGISTRY_DATABASE_URL)"
        )
    async with running(settings) as container:  # a wrong or missing master key: nothing written
        await migrate(container.engine)
        return await import_users(
            source_url,
            container.handlers(),
            user_table=user_table,
            oauth_table=oauth_table,
            progress=progress,
        )
