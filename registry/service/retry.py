"""What the write and read paths try again: a command decided again after a deadlock or
serialization failure (`retryable_sqlstate`), and one more try after a lost database
connection, where trying again is safe.

A backend terminated by an administrator, a failover, a restart: the statement in flight
fails, SQLAlchemy invalidates the pool, and the next checkout connects anew. So one more try
hides a blip from the client; a database that stays down still fails the second try, and the
client gets that error. Only operations that are safe to do twice are retried:

- reads (the read API's routes, the adapter's reads in a session that held nothing else);
- commands that carry a `command_id`: a second attempt after one that did commit is answered
  from the processed-commands record (the first outcome), never applied twice. Without one,
  a connection lost during COMMIT leaves the outcome unknown, so it is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Executable
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession

from events.connectivity import connection_lost, sqlstate

T = TypeVar("T")

log = logging.getLogger("registry.service.retry")

__all__ = ["connection_lost", "once_more", "retryable_sqlstate", "session_read", "sqlstate"]

#: deadlock_detected, serialization_failure: the transaction was rolled back and can be re-run
RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def retryable_sqlstate(exc: BaseException) -> str | None:
    """The error's SQLSTATE when it is a deadlock or serialization victim, else None (read
    from the driver's error, never from its message)."""
    code = sqlstate(exc)
    return code if code in RETRY_SQLSTATES else None


async def once_more(fn: Callable[[], Awaitable[T]], *, what: str, safe: bool = True) -> T:
    """`await fn()`; if it fails because the database connection was lost and `safe`, once
    more (on a fresh connection). Any other error, or a second failure, is raised as is."""
    try:
        return await fn()
    except Exception as exc:
        if not safe or not connection_lost(exc):
            raise
        log.warning(
            "database connection lost; trying once more",
            extra={"operation": what, "error": type(exc).__name__},
        )
    return await fn()


async def session_read(
    session: AsyncSession, stmt: Executable, params: dict[str, Any] | None = None
) -> Result[Any]:
    """`session.execute(stmt, params)` for a read, tried once more after a lost connection
    when the read began the session's transaction with nothing of the app's to flush: then
    the transaction lost held nothing but this read. In a transaction begun earlier the app's
    own work (flushed writes) went with the connection, and a silent retry would hide that
    loss: the error is raised."""
    began_here = not session.in_transaction() and not (
        session.new or session.dirty or session.deleted
    )
    try:
        result: Result[Any] = await session.execute(stmt, params)
        return result
    except Exception as exc:
        if not began_here or not connection_lost(exc):
            raise
        log.warning("database connection lost; reading once more", extra={"operation": "read"})
        try:  # end the dead transaction; the next execute reconnects
            await session.rollback()
        except Exception as err:
            if not connection_lost(err):
                raise
    result = await session.execute(stmt, params)
    return result
