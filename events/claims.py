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

from sqlalchemy import ColumnElement, Insert, Table, TextualSelect, bindparam, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


class Taking:
    """`INSERT ... ON CONFLICT DO NOTHING RETURNING returned` into `table`, for each backend.

    `took` sends it as a textual statement made once per backend and set of columns:
    SQLAlchemy does not cache the compiled form of an ON CONFLICT insert (it would compile
    it again for every row). `taking[dialect_name]` is the `Insert` itself (for executemany)."""

    def __init__(self, table: Table, *returned: ColumnElement[Any]) -> None:
        self.table = table
        self.returned = returned
        self._inserts = {
            "postgresql": postgresql.insert(table).on_conflict_do_nothing().returning(*returned),
            "sqlite": sqlite.insert(table).on_conflict_do_nothing().returning(*returned),
        }
        self._texts: dict[tuple[str, tuple[str, ...]], TextualSelect] = {}

    def __getitem__(self, dialect_name: str) -> Insert:
        return self._inserts[dialect_name]

    def textual(self, dialect: Dialect, columns: tuple[str, ...]) -> TextualSelect:
        """The statement for rows with these keys, made once."""
        key = (dialect.name, columns)
        found = self._texts.get(key)
        if found is None:
            quote = dialect.identifier_preparer
            table = self.table
            names = ", ".join(quote.quote(table.c[c].name) for c in columns)
            values = ", ".join(f":{c}" for c in columns)
            back = ", ".join(quote.quote(str(getattr(r, "name", r))) for r in self.returned)
            found = (
                text(
                    f"INSERT INTO {quote.format_table(table)} ({names}) VALUES ({values}) "
                    f"ON CONFLICT DO NOTHING RETURNING {back}"
                )
                .bindparams(*(bindparam(c, type_=table.c[c].type) for c in columns))
                .columns(*self.returned)
            )
            self._texts[key] = found
        return found


def taking(table: Table, *returned: ColumnElement[Any]) -> Taking:
    """`INSERT ... ON CONFLICT DO NOTHING RETURNING returned` for each backend (`Taking`)."""
    return Taking(table, *returned)


async def took(conn: AsyncConnection, statements: Taking, row: dict[str, Any]) -> bool:
    """Insert `row` with a `taking` statement; False (nothing written) when its key is taken."""
    result = await conn.execute(statements.textual(conn.dialect, tuple(row)), row)
    return result.first() is not None
