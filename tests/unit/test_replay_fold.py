"""The replay's fold (`projections.replay_fold`): its short ways for registrations and one-column
events end where `Folder.apply` does, and the bulk phase's pause of the garbage collector
leaves the collector as it found it."""

from __future__ import annotations

import gc
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from events import EVENT_TYPES
from projections import OAuthAccount, User, UserProjection
from projections.folding import StreamChange
from projections.replay_bulk import gc_paused

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stored(history: list[tuple[uuid.UUID, str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """Rows as the replay reads them (no sealed values), versions counted per stream."""
    versions: dict[uuid.UUID, int] = {}
    rows = []
    for position, (sid, event_type, data) in enumerate(history, 1):
        versions[sid] = versions.get(sid, 0) + 1
        rows.append(
            (
                position,
                position,
                sid,
                versions[sid],
                event_type,
                EVENT_TYPES[event_type].schema_version,
                json.dumps(data),
                T0 + timedelta(seconds=position),
                None,
            )
        )
    return rows


def test_the_replay_fold_ends_where_folder_apply_does() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    reg: dict[str, Any] = {"email": " A@Example.COM", "hashed_password": "h", "profile": {}}
    history: list[tuple[uuid.UUID, str, dict[str, Any]]] = [
        (a, "UserRegistered", reg),
        (b, "UserRegistered", {**reg, "email": "b@example.com", "is_verified": True}),
        (a, "UserVerified", {}),
        (a, "UserEmailChanged", {"email": "New@Example.com "}),
        (b, "UserDeleted", {}),
        (b, "UserPasswordChanged", {"hashed_password": "p"}),  # on a deleted stream
        (a, "UserPasswordChanged", {"hashed_password": "p2"}),
        (b, "UserRegistered", {**reg, "email": "b2@example.com"}),  # registered again
        (b, "UserSuperuserGranted", {}),
        (a, "UserDeactivated", {}),
        (c, "UserVerified", {}),  # a stream with no registration
        (c, "UserRegistered", {**reg, "email": "c@example.com"}),
    ]
    rows = stored(history)
    projection = UserProjection(User, OAuthAccount)
    folded: dict[uuid.UUID, StreamChange] = {}
    assert projection.fold_rows(folded, rows[:5]) == 5
    assert projection.fold_rows(folded, rows[5:]) == len(rows) - 5
    applied: dict[uuid.UUID, StreamChange] = {}
    for _, _, sid, version, event_type, _, data, recorded_at, _ in rows:
        change = applied.setdefault(sid, StreamChange(sid))
        projection.folder.apply(change, version, event_type, json.loads(data), recorded_at)
    assert folded == applied
    row = folded[a].insert
    assert row is not None
    assert row["email"] == "new@example.com"


def test_the_bulk_phase_leaves_the_collector_as_it_found_it() -> None:
    was = gc.isenabled()
    try:
        for before in (True, False):
            (gc.enable if before else gc.disable)()
            with gc_paused():
                assert not gc.isenabled()
                with gc_paused():  # another bulk phase in this process
                    assert not gc.isenabled()
                assert not gc.isenabled()
            assert gc.isenabled() is before
    finally:
        (gc.enable if was else gc.disable)()
