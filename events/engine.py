"""Database engines for the log: PostgreSQL through asyncpg, SQLite through aiosqlite."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import MutableMapping

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from events.connectivity import connection_lost

SQLITE_BUSY_TIMEOUT_MS = 30_000

log = logging.getLogger("events.engine")

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def normalise_url(url: str | URL) -> URL:
    """The URL with the async driver this project uses (`postgresql://` means asyncpg here)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    if parsed.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use postgresql+asyncpg://… or sqlite+aiosqlite:///…"
        )
    return parsed


def _journal_mode(cur: DBAPICursor) -> str:
    cur.execute("PRAGMA journal_mode")
    row = cur.fetchone()
    return str(row[0]).lower() if row else ""


def _use_wal(cur: DBAPICursor) -> None:
    """Put the database file in WAL mode (it stays so: later connections find it there).

    Switching needs the file to itself, and SQLite answers "database is locked" at once,
    without its busy handler, while another connection of a process starting at the same
    moment holds it; that connection is then switching the file itself. So: look first, try,
    and look again for a moment before going on in whatever mode the file is in."""
    for _ in range(50):
        try:
            if _journal_mode(cur) == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            if _journal_mode(cur) == "wal":
                return
        except sqlite3.OperationalError:  # "database is locked"
            pass
        time.sleep(0.02)  # a first start only; the connection is not in use yet
    log.warning("the SQLite database is not in WAL mode: readers and writers will wait more")


def create_engine(url: str | URL, **kwargs: object) -> AsyncEngine:
    """An async engine for the log. SQLite runs in WAL mode with a busy timeout so that a
    server and a worker process can share one file."""
    parsed = normalise_url(url)
    # driver errors must never carry SQL parameters (password hashes, tokens) into logs
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        connect_args = kwargs.setdefault("connect_args", {})
        if isinstance(connect_args, MutableMapping):
            connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_async_engine(parsed, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # no pool_pre_ping: it costs a round trip per checkout, and SQLAlchemy invalidates the pool
    # when a statement fails with a disconnect error (see _disconnects)
    engine = create_async_engine(parsed, **kwargs)
    event.listen(engine.sync_engine, "handle_error", _disconnects)
    return engine


def _disconnects(context: ExceptionContext) -> None:
    """Count every lost connection as a disconnect. SQLAlchemy's asyncpg dialect asks the driver
    whether the connection is closed, and right after a backend was terminated it may not be
    yet: the error then passes as an ordinary one, the pool keeps its other dead connections,
    and a retry checks one of them out. Flagging it (the event's documented `is_disconnect`)
    makes SQLAlchemy invalidate the pool, so the next checkout connects anew."""
    if not context.is_disconnect and connection_lost(context.original_exception):
        # documented as settable; SQLAlchemy 2.0.50's typing declares it read-only (slots)
        context.is_disconnect = True  # type: ignore[misc,unused-ignore]


def asyncpg_dsn(url: str | URL) -> str:
    """A DSN that `asyncpg.connect` accepts, for connections kept out of the pool."""
    parsed = normalise_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)
