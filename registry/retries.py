"""Which database errors are worth deciding a command again: deadlock and serialization
victims (SQLSTATE 40P01, 40001), read from the driver's error, never from its message."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

#: deadlock_detected, serialization_failure: the transaction was rolled back and can be re-run
RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, or None. SQLAlchemy wraps the driver's error
    (`DBAPIError.orig`); asyncpg's errors carry `.sqlstate`, and SQLAlchemy's asyncpg adapter
    (2.0 and 2.1) copies it onto its wrapper, whose `__cause__` is asyncpg's error: every link
    of that chain is looked at, so either is enough."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        code = getattr(err, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
        orig = err.orig if isinstance(err, DBAPIError) else None
        todo += [err.__cause__, orig if isinstance(orig, BaseException) else None]
    return None


def retryable_sqlstate(exc: BaseException) -> str | None:
    """The error's SQLSTATE when it is a deadlock or serialization failure, else None."""
    code = sqlstate(exc)
    return code if code in RETRY_SQLSTATES else None
