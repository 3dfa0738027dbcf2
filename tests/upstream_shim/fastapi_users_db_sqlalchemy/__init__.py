"""Upstream's names for this project's classes, and nothing else.

tests/integration/test_upstream_suite.py puts this directory first on the path of a pytest run
of fastapi-users-db-sqlalchemy's own tests, so that their imports get the event-sourced
registry instead of upstream's adapter (also where upstream's package is installed too).
"""

import uuid

from projections import BaseOAuthAccountTableUUID as SQLAlchemyBaseOAuthAccountTableUUID
from projections import BaseUserTableUUID as SQLAlchemyBaseUserTableUUID
from registry import EventSourcedUserDatabase as SQLAlchemyUserDatabase

UUID_ID = uuid.UUID

__all__ = [
    "UUID_ID",
    "SQLAlchemyBaseOAuthAccountTableUUID",
    "SQLAlchemyBaseUserTableUUID",
    "SQLAlchemyUserDatabase",
]
