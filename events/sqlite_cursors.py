"""Close the driver cursor of a failed SQLite statement on its own thread (SQLAlchemy 2.0).

SQLAlchemy 2.0's aiosqlite adapter opens an aiosqlite cursor per statement and closes it only
when the statement succeeds. When the statement fails (a unique violation: a duplicate email),
the cursor stays referenced by the exception's traceback, in a reference cycle, until the
garbage collector frees it. The collector runs on whatever thread allocates, usually the event
loop's, and freeing a `sqlite3.Cursor` resets its statement, which takes that connection's
SQLite mutex. If the pooled connection is by then serving another writer whose INSERT waits in
SQLite's busy handler (holding the mutex) for the write lock, the event loop blocks on the
mutex, so the transaction holding the write lock (the projector's, on the same loop) can never
commit: the process freezes for the whole busy timeout (30 s) and the write fails with
"database is locked". This was `test_insert_existing_email_any_case[sqlite]`'s intermittent
failure.

`install()` replaces the 2.0 adapter cursor's `execute`/`executemany` with the same steps
plus closing the driver cursor when they fail, on the connection's thread, before the error
propagates (SQLAlchemy 2.1 keeps the driver cursor as an attribute and closes it itself on
failure; there is nothing to do there). Installed when `events` is imported, so it covers
the app's own engines too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any

_PENDING: set[asyncio.Task[Any]] = set()


def _close(adapted: Any, cursor: Any, cancelled: bool) -> None:
    """Close an aiosqlite cursor on its connection's thread, never on the caller's."""
    if cursor is None:
        return
    if not cancelled:
        with contextlib.suppress(Exception):  # a dead connection: nothing left to reset
            adapted.await_(cursor.close())
        return
    # a cancelled caller must not wait again: queue the close behind the statement still
    # running on the connection's thread
    try:
        task = asyncio.get_running_loop().create_task(cursor.close())
    except RuntimeError:  # pragma: no cover - no loop: the process is going away
        return
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


@contextlib.contextmanager
def _closed_on_failure(adapted: Any, opened: list[Any]) -> Iterator[None]:
    """On failure, close the driver cursor opened (if any) on its thread, then raise as
    SQLAlchemy's adapter does."""
    try:
        yield
    except Exception as error:
        _close(adapted, opened[0] if opened else None, cancelled=False)
        adapted._adapt_connection._handle_exception(error)
    except BaseException:
        _close(adapted, opened[0] if opened else None, cancelled=True)
        raise


def _execute(self: Any, operation: Any, parameters: Any = None) -> Any:
    opened: list[Any] = []
    with _closed_on_failure(self, opened):
        cursor = self.await_(self._connection.cursor())
        opened.append(cursor)
        if parameters is None:
            self.await_(cursor.execute(operation))
        else:
            self.await_(cursor.execute(operation, parameters))
        if cursor.description:
            self.description = cursor.description
            self.lastrowid = self.rowcount = -1
            if not self.server_side:
                self._rows = deque(self.await_(cursor.fetchall()))
        else:
            self.description = None
            self.lastrowid = cursor.lastrowid
            self.rowcount = cursor.rowcount
        if not self.server_side:
            self.await_(cursor.close())
        else:
            self._cursor = cursor


def _executemany(self: Any, operation: Any, seq_of_parameters: Any) -> Any:
    opened: list[Any] = []
    with _closed_on_failure(self, opened):
        cursor = self.await_(self._connection.cursor())
        opened.append(cursor)
        self.await_(cursor.executemany(operation, seq_of_parameters))
        self.description = None
        self.lastrowid = cursor.lastrowid
        self.rowcount = cursor.rowcount
        self.await_(cursor.close())


def install() -> bool:
    """Patch SQLAlchemy 2.0's aiosqlite cursor (idempotent); False where not needed."""
    try:
        from sqlalchemy.dialects.sqlite import aiosqlite as adapter
    except ImportError:  # pragma: no cover - aiosqlite is a dependency
        return False
    cls = getattr(adapter, "AsyncAdapt_aiosqlite_cursor", None)
    slots = {
        name for klass in getattr(cls, "__mro__", ()) for name in getattr(klass, "__slots__", ())
    }
    if cls is None or "_cursor" in slots:  # (2.1.9 declares it on the base class)
        return False  # SQLAlchemy 2.1+: the driver cursor is kept and closed on failure
    if cls.execute is not _execute:
        cls.execute = _execute
        cls.executemany = _executemany
    return True
