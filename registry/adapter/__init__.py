"""The FastAPI Users adapter: `EventSourcedUserDatabase`, what it needs per engine, and
`run_projector` for an app's lifespan."""

from registry.adapter.database import EventSourcedUserDatabase
from registry.adapter.projector import run_projector

__all__ = ["EventSourcedUserDatabase", "run_projector"]
