"""Declarative models as the tests handle them."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.orm import DeclarativeBase


def table_of(model: type[DeclarativeBase]) -> Table:
    """The model's table, typed as the `Table` it is (SQLAlchemy types `__table__` as any
    FromClause, which has no insert, delete or copy)."""
    table = model.__table__
    assert isinstance(table, Table), table
    return table
