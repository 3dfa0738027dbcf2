"""Table generations for blue/green replay: clone the live tables as `<name>__next` (every
index and constraint name suffixed too), then swap them in with renames in one transaction.

PostgreSQL renames the tables, their constraints and indexes back to the live names. SQLite
cannot rename an index, so there the `__next` indexes are dropped and the live model's indexes
created on the swapped-in table (constraints live inside SQLite's table text: their names keep
the suffix, which nothing depends on).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ColumnElement,
    Connection,
    ForeignKeyConstraint,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.sql import visitors

NEXT = "__next"


def suffixed(name: object) -> str | None:
    if name is None:
        return None
    return str(name) if NEXT in str(name) else f"{name}{NEXT}"


def clone(table: Table, md: MetaData, renamed: dict[str, str]) -> Table:
    """`table` as `<name>__next` in `md`; foreign keys to tables in `renamed` follow them."""
    # Column.copy() is deprecated, and Table.to_metadata() keeps the constraint and index
    # names and the foreign keys' targets, which the clone must change
    columns = [c._copy() for c in table.columns]  # noqa: SLF001 no public way to copy a Column
    for c in columns:  # their indexes and unique constraints are cloned below, renamed
        c.index = c.unique = None
    extra: list[Any] = []
    for con in table.constraints:
        if isinstance(con, PrimaryKeyConstraint):
            continue  # the columns carry primary_key=True
        if isinstance(con, ForeignKeyConstraint):
            targets = [
                f"{renamed.get(e.column.table.name, e.column.table.name)}.{e.column.name}"
                for e in con.elements
            ]
            extra.append(
                ForeignKeyConstraint(
                    [c.name for c in con.columns],
                    targets,
                    name=suffixed(con.name),
                    ondelete=con.ondelete,
                    onupdate=con.onupdate,
                )
            )
        elif isinstance(con, UniqueConstraint):
            extra.append(UniqueConstraint(*[c.name for c in con.columns], name=suffixed(con.name)))
        elif isinstance(con, CheckConstraint):
            extra.append(CheckConstraint(con.sqltext, name=suffixed(con.name)))
    new = Table(renamed[table.name], md, *columns, *extra)
    for index in table.indexes:
        exprs = [_rebind(e, new) for e in index.expressions]
        Index(suffixed(index.name), *exprs, unique=index.unique, _table=new)
    return new


def _rebind(expr: str | ColumnElement[Any], new: Table) -> ColumnElement[Any]:
    if isinstance(expr, str):
        return new.c[expr]

    def replace(element: object, **_kw: object) -> Column[Any] | None:
        if isinstance(element, Column) and element.name in new.c:
            return new.c[element.name]
        return None

    # an expression comes back as one (mypy cannot pick the overload for ColumnElement[Any])
    rebound: ColumnElement[Any] = visitors.replacement_traverse(expr, {}, replace)
    return rebound


def foreign_referrers(sync_conn: Connection, table: str, ignore: set[str]) -> list[str]:
    """Tables (other than `ignore`) with a foreign key to `table`."""
    insp = inspect(sync_conn)
    found = []
    for name in insp.get_table_names():
        if name in ignore or name == table:
            continue
        if any(fk["referred_table"] == table for fk in insp.get_foreign_keys(name)):
            found.append(name)
    return found


def _q(sync_conn: Connection, name: str) -> str:
    return sync_conn.dialect.identifier_preparer.quote(name)


def swap(sync_conn: Connection, live: list[Table], nxt: list[Table]) -> None:
    """Drop the live tables and rename the next ones into their place (children first), in
    the caller's transaction."""

    def q(name: str) -> str:
        return _q(sync_conn, name)

    insp = inspect(sync_conn)
    existing = set(insp.get_table_names())
    for table in reversed(live):  # OAuth accounts before users
        if table.name in existing:
            sync_conn.execute(text(f"DROP TABLE {q(table.name)}"))
    for old, new in zip(live, nxt, strict=True):
        sync_conn.execute(text(f"ALTER TABLE {q(new.name)} RENAME TO {q(old.name)}"))
    if sync_conn.dialect.name == "postgresql":
        for old in live:
            _rename_pg(sync_conn, old.name)
    else:
        for old, new in zip(live, nxt, strict=True):
            for index in new.indexes:
                sync_conn.execute(text(f"DROP INDEX IF EXISTS {q(str(index.name))}"))
            for index in old.indexes:
                index.create(sync_conn)


def _rename_pg(sync_conn: Connection, table: str) -> None:
    def q(name: str) -> str:
        return _q(sync_conn, name)

    constraints = sync_conn.execute(
        text("SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass)"),
        {"t": q(table)},
    ).scalars()
    for name in list(constraints):
        if NEXT in name:
            new = name.replace(NEXT, "")
            sync_conn.execute(
                text(f"ALTER TABLE {q(table)} RENAME CONSTRAINT {q(name)} TO {q(new)}")
            )
    indexes = sync_conn.execute(
        text(
            "SELECT indexname FROM pg_indexes"
            " WHERE tablename = :t AND schemaname = current_schema()"
        ),
        {"t": table},
    ).scalars()
    for name in list(indexes):
        if NEXT in name:
            sync_conn.execute(text(f"ALTER INDEX {q(name)} RENAME TO {q(name.replace(NEXT, ''))}"))


def drop_table(sync_conn: Connection, table: Table) -> None:
    table.drop(sync_conn, checkfirst=True)


def create_table(sync_conn: Connection, table: Table) -> None:
    table.create(sync_conn)


def table_names(sync_conn: Connection) -> set[str]:
    return set(inspect(sync_conn).get_table_names())
