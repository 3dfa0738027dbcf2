"""Errors of the read side (one root, `ProjectionError`)."""

from __future__ import annotations


class ProjectionError(Exception):
    """Root of every error the projections package raises on purpose."""


class ProjectionTimeout(ProjectionError):
    """The read model did not reach the needed version in time (read-your-writes)."""


class ReplayError(ProjectionError):
    """A replay cannot start or continue (for example, another replay is half done)."""
