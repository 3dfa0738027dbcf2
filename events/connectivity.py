"""Telling a lost database connection from every other error.

A lost connection (the server restarted, an administrator terminated the backend, the network
dropped) is worth one more try on a fresh connection: SQLAlchemy invalidates the pool's
connections when a statement fails with a disconnect, so the next checkout connects anew.
Anything else is an error of its own and must surface as itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from asyncpg.exceptions import InternalClientError
from sqlalchemy.exc import DBAPIError

#: SQLSTATEs of a connection the server ended: class 08 (connection exception), and
#: admin_shutdown / crash_shutdown / cannot_connect_now (pg_terminate_backend sends 57P01)
_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _asyncpg_protocol_broken(exc: BaseException) -> bool:
    """asyncpg's "cannot switch to state …; another operation (2) is in progress": the server's
    FATAL (pg_terminate_backend) was read but the socket's close not yet, so SQLAlchemy does
    not see the connection closed; asyncpg's protocol is stuck consuming an error that never
    ends. Its InternalClientError means only such a broken protocol state."""
    return isinstance(exc, InternalClientError)


def error_chain(exc: BaseException, limit: int = 10) -> Iterator[BaseException]:
    """`exc` and what it wraps: SQLAlchemy's driver error (`DBAPIError.orig`), `__cause__` and
    `__context__`, each once (at most `limit` links)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < limit:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = e.orig if isinstance(e, DBAPIError) else None
        todo += [e.__context__, e.__cause__, orig if isinstance(orig, BaseException) else None]


def _own_sqlstate(exc: BaseException) -> str | None:
    value = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return value if isinstance(value, str) and value else None


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, or None: read from the driver's error (asyncpg's
    carry `.sqlstate`; SQLAlchemy's asyncpg adapter, 2.0 and 2.1, copies it onto its wrapper),
    never from the message text."""
    for e in error_chain(exc):
        code = _own_sqlstate(e)
        if code is not None:
            return code
    return None


def violated_table(exc: BaseException) -> str | None:
    """The table whose constraint a database error reports as violated (asyncpg's errors carry
    `table_name`), or None."""
    for e in error_chain(exc):
        name = getattr(e, "table_name", None)
        if isinstance(name, str):
            return name
    return None


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the database connection was lost or could not
    be made: SQLAlchemy flagged it (`connection_invalidated`), the server ended the session
    (SQLSTATE class 08, 57P01-57P03), the socket failed (`OSError`), or asyncpg's protocol
    broke on the server's goodbye."""
    for e in error_chain(exc):
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        state = _own_sqlstate(e)
        if state is not None and (state.startswith("08") or state in _LOST_SQLSTATES):
            return True
        if isinstance(e, OSError):  # ConnectionRefusedError, ConnectionResetError, ...
            return True
        if _asyncpg_protocol_broken(e):
            return True
    return False
