"""The HTTP read API: users (now, at a version, as of an instant), history, projections,
health, readiness and metrics. Build it with `create_app(container)`."""

from registry.api.app import create_app

__all__ = ["create_app"]
