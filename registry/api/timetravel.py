"""A user as of an instant: the stream up to then, folded by the write side's own `fold`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from events import EventStore, normalise_email
from projections.queries import ReadModel
from registry.domain.decisions import fold
from registry.errors import UserNotFoundError


async def user_as_of(
    store: EventStore, read_model: ReadModel, user_id: UUID, when: datetime
) -> dict[str, Any] | None:
    """The user's public state from the events recorded at or before `when`; None before the
    registration or after the deletion. An erased user has no past either: UserNotFoundError
    saying so (their personal data is gone, at every instant)."""
    stream = await store.read_stream(user_id, until=when)
    state = fold(user_id, stream)
    if state.erased:
        raise UserNotFoundError(f"user {user_id} was erased: their past states are gone too")
    if not state.alive:
        return None
    return {
        "id": user_id,
        "email": normalise_email(state.email),  # as the read model shows it
        "is_active": state.is_active,
        "is_superuser": state.is_superuser,
        "is_verified": state.is_verified,
        "version": state.version,
        "created_at": stream[0].recorded_at,
        "updated_at": stream[-1].recorded_at,
        "profile": {name: state.profile.get(name) for name in read_model.profile_columns},
        "oauth_accounts": [
            {
                "id": a.id,
                "oauth_name": a.oauth_name,
                "account_id": a.account_id,
                "account_email": a.account_email,
                "expires_at": a.expires_at,
            }
            for a in state.oauth_accounts.values()
        ],
    }
