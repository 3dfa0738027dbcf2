"""Seeding the log fast: `EventStore.append` directly, many streams per transaction."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from events import (
    EventStore,
    UserEmailChanged,
    UserPasswordChanged,
    UserRegistered,
    UserVerified,
)

#: events per user stream: a registration and three changes (a plausible life in a user
#: registry; the COPY baseline of figure 3 writes one row per stream, so longer streams make
#: that baseline relatively faster)
PER_STREAM = 4
STREAMS_PER_TX = 250


def history(i: int) -> list[Any]:
    """One user's life: registered, verified, a new email and a new password."""
    life: list[Any] = [
        UserRegistered(email=f"u{i}@example.com", hashed_password="h" * 60),
        UserVerified(),
        UserEmailChanged(email=f"user{i}@example.org"),
        UserPasswordChanged(hashed_password="p" * 60),
    ]
    return life


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
