"""The source side of `registry import-users`: reading an existing FastAPI Users database
(what fastapi-users-db-sqlalchemy wrote) without changing anything in it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from events import normalise_url
from registry.errors import RegistryError

#: rows read per query (keyset pagination by id)
PAGE = 500

USER_BASE_COLUMNS = frozenset(
    {"id", "email", "hashed_password", "is_active", "is_superuser", "is_verified"}
)


class ImportSourceError(RegistryError):
    code = "IMPORT_SOURCE_INVALID"


def as_uuid(value: object, table: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ImportSourceError(
            f"{table}.id {value!r} is not a UUID: only UUID ids (SQLAlchemyBaseUserTableUUID) "
            "can be imported, the registry keys every user's stream by its UUID"
        ) from None


def json_value(value: object) -> object:
    """A custom column's value as JSON (the profile is stored in the event log)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise ImportSourceError("binary custom columns cannot be imported into the event log")
    return value


async def reflect(conn: AsyncConnection, user_table: str, oauth_table: str) -> MetaData:
    meta = MetaData()
    names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    wanted = [name for name in (user_table, oauth_table) if name in names]
    await conn.run_sync(lambda sync: meta.reflect(sync, only=wanted))
    return meta


async def pages(conn: AsyncConnection, table: Table) -> AsyncIterator[Mapping[str, Any]]:
    """Every row of `table`, in id order, a page at a time (keyset: no long-held cursor)."""
    last: Any = None
    while True:
        stmt = select(table).order_by(table.c.id).limit(PAGE)
        if last is not None:
            stmt = stmt.where(table.c.id > last)
        rows = (await conn.execute(stmt)).mappings().all()
        for row in rows:
            yield dict(row)
        if len(rows) < PAGE:
            return
        last = rows[-1]["id"]


async def count(conn: AsyncConnection, table: Table) -> int:
    return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def source_engine(url: str) -> AsyncEngine:
    # a plain engine: unlike events.create_engine it changes nothing (no WAL) in the source
    parsed = normalise_url(url)
    path = parsed.database or ":memory:"
    on_disk = parsed.get_backend_name() == "sqlite" and path != ":memory:"
    if on_disk and not Path(path).is_file():  # connecting would create an empty file
        raise ImportSourceError(f"no SQLite database at {path}")
    return create_async_engine(parsed)
