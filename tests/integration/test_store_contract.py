"""The event log's contract (`tests/support/store_contract.py`) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events import EventStore, create_engine
from events.postgresql import PostgresEventStore
from events.sqlite import SqliteEventStore
from events.tables import metadata
from tests.support.store_contract import StoreContract


async def _store(url: str) -> AsyncIterator[EventStore]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield EventStore(engine)
    finally:
        await engine.dispose()


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[EventStore]:
        async for store in _store(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"):
            assert type(store) is SqliteEventStore
            yield store


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[EventStore]:
        async for store in _store(pg_url):
            assert type(store) is PostgresEventStore
            yield store
