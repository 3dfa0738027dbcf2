"""The event log's contract (`tests/support/store_contract.py`) on the in-memory store."""

from __future__ import annotations

import pytest

from events.memory import InMemoryEventStore
from tests.support.store_contract import StoreContract


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore()
