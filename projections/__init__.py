"""The read side: read-model tables and mixins, the user projection, projector workers,
replay and status."""

from projections.errors import ProjectionError, ProjectionTimeout, ReplayError
from projections.models import Base, OAuthAccount, User
from projections.tables import BaseOAuthAccountTableUUID, BaseUserTableUUID, metadata
from projections.users import UserProjection, projected_version

__all__ = [
    "Base",
    "BaseOAuthAccountTableUUID",
    "BaseUserTableUUID",
    "OAuthAccount",
    "ProjectionError",
    "ProjectionTimeout",
    "ReplayError",
    "User",
    "UserProjection",
    "metadata",
    "projected_version",
]
