"""Seeding the log fast: `EventStore.append` directly, many streams per transaction."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from events import (
    EventStore,
    UserActivated,
    UserDeactivated,
    UserEmailChanged,
    UserPasswordChanged,
    UserRegistered,
    UserSuperuserGranted,
    UserSuperuserRevoked,
    UserVerified,
)

#: events per user stream (a registration and seven changes)
PER_STREAM = 8
STREAMS_PER_TX = 250


def history(i: int) -> list[Any]:
    """One user's life: eight events, the last state differing from the first."""
    return [
        UserRegistered(email=f"u{i}@example.com", hashed_password="h" * 60),
        UserEmailChanged(email=f"user{i}@example.org"),
        UserPasswordChanged(hashed_password="p" * 60),
        UserVerified(),
        UserDeactivated(),
        UserActivated(),
        UserSuperuserGranted(),
        UserSuperuserRevoked(),
    ]


async def seed(store: EventStore, n_events: int, *, concurrency: int = 4) -> int:
    """Append about `n_events` (whole streams of PER_STREAM events); returns the count."""
    streams = max(1, n_events // PER_STREAM)
    todo = iter(range(streams))

    async def writer() -> None:
        while True:
            chunk = [i for _, i in zip(range(STREAMS_PER_TX), todo, strict=False)]
            if not chunk:
                return
            async with store.engine.begin() as conn:
                for i in chunk:
                    await store.append(uuid.uuid4(), history(i), expected_version=0, conn=conn)

    await asyncio.gather(*(writer() for _ in range(concurrency)))
    store.committed()
    return streams * PER_STREAM
