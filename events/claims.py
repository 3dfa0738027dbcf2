"""Insert-if-absent: a row whose key is taken comes back as an empty result, not as a failed
statement (email and OAuth reservations, processed command ids, data keys, the master key
record).

Expected conflicts must not fail on SQLite: SQLAlchemy 2.0's aiosqlite adapter leaves a failed
statement's driver cursor to the garbage collector, and freeing it on the event loop can block
the loop on that connection's mutex for the whole busy timeout (see
`events.statements.sqlite_guarded_insert`). On PostgreSQL the conflict does not abort the
transaction either, and costs no extra round trip. On both backends a concurrent, uncommitted
insert of the same key is waited for, as a plain INSERT would, so races are decided by the
primary key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

#: a statement per backend name
Taking = dict[str, Insert]


def taking(table: Table, *returned: ColumnElement[Any]) -> Taking:
    """`INSERT ... ON CONFLICT DO NOTHING RETURNING returned` for each backend, built once (so
    compiled once)."""
    return {
        "postgresql": postgresql.insert(table).on_conflict_do_nothing().returning(*returned),
        "sqlite": sqlite.insert(table).on_conflict_do_nothing().returning(*returned),
    }


async def took(conn: AsyncConnection, statements: Taking, row: dict[str, Any]) -> bool:
    """Insert `row` with a `taking` statement; False (nothing written) when its key is taken."""
    result = await conn.execute(statements[conn.dialect.name], row)
    return result.first() is not None
