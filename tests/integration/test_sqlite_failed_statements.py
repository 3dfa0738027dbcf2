"""A failed SQLite statement leaves nothing for the garbage collector that can freeze the event
loop (events/sqlite_cursors.py).

The sequence that froze the process for the 30 s busy timeout: a statement fails on a pooled
connection (a duplicate email); that connection then serves a writer that waits in SQLite's
busy handler for the write lock, which a second connection holds; the garbage collector runs on
the event loop and frees the failed statement's cursor, which needs the first connection's
mutex, held by the waiting writer; the second connection can never commit. SQLite only: the
hazard is aiosqlite's thread per connection.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from events import create_engine
from events.sqlite_cursors import install


async def test_gc_after_a_failed_statement_does_not_block_the_loop(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}", poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as failing, engine.connect() as holder:
            failed: BaseException | None = None
            try:
                await failing.execute(text("INSERT INTO t VALUES (1)"))
            except IntegrityError as exc:
                failed = exc  # what a caller's traceback keeps alive until a collection
            await failing.rollback()
            assert failed is not None

            await holder.execute(text("INSERT INTO t VALUES (2)"))  # takes the write lock
            waiting = asyncio.create_task(failing.execute(text("INSERT INTO t VALUES (3)")))
            await asyncio.sleep(0.3)  # the INSERT is now in SQLite's busy handler
            assert not waiting.done()

            started = time.monotonic()
            del failed
            gc.collect()  # frees the failed statement's cursor here, on the event loop
            blocked = time.monotonic() - started
            await holder.commit()
            await asyncio.wait_for(waiting, 10)
            await failing.commit()
        assert blocked < 1.0, f"the event loop was blocked {blocked:.1f} s"
        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all()
        assert ids == [1, 2, 3]
    finally:
        await engine.dispose()


def test_installed_once_where_sqlalchemy_needs_it() -> None:
    from sqlalchemy.dialects.sqlite import aiosqlite as adapter

    cls = adapter.AsyncAdapt_aiosqlite_cursor
    if "_cursor" in cls.__slots__:  # pragma: no cover - SQLAlchemy 2.1 closes it itself
        pytest.skip("this SQLAlchemy keeps the driver cursor and closes it on failure")
    assert install() is True and install() is True
    assert cls.execute.__module__ == "events.sqlite_cursors"
