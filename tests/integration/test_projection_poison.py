"""Poison events, on SQLite and PostgreSQL: an event the projector cannot apply (its data key is
wrapped by a master key nobody configured) stops only its own partition, after a bounded
number of attempts with backoff, and says so once (log), durably (projection_failures) and
everywhere an operator looks (`registry status`, `/projections`, `/readyz`, `/metrics`); the
other partitions keep projecting. `registry projections retry` after the fix recovers it;
`registry projections skip` moves past exactly that event and leaves a record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from events import EventStore, UserEmailChanged, UserRegistered
from events.crypto import Crypto, Keyring, MasterKey, attach
from projections import OAuthAccount, User, UserProjection, failures, leases
from projections.errors import ProjectionError
from projections.status import PartitionStatus, projection_status
from projections.tables import projection_checkpoints
from projections.worker import ProjectionWorker
from tests.support.api import Api, open_api
from tests.support.waiting import eventually

PARTITIONS = 4
POISONED = 1  # the partition the poison event lives in
ATTEMPTS = 3
T = TypeVar("T")

#: the deployment's master key, and one it never had (the poison event's data key is wrapped
#: by it: an event restored from another deployment, a key dropped too early in a rotation)
KEY, STRANGER = MasterKey.generate(), MasterKey.generate()


def use_keys(engine: AsyncEngine, *keys: MasterKey) -> None:
    """Encrypt with keys[0]; the others still open (what REGISTRY_PREVIOUS_MASTER_KEYS does)."""
    attach(engine, Crypto(Keyring(keys[0], keys[1:])))


def user_in(partition: int) -> uuid.UUID:
    while True:
        sid = uuid.uuid4()
        if leases.partition_of(sid, PARTITIONS) == partition:
            return sid


async def register(store: EventStore, sid: uuid.UUID) -> int:
    [recorded] = await store.append(
        sid,
        [UserRegistered(email=f"{sid.hex[:12]}@example.com", hashed_password="h")],
        expected_version=0,
    )
    return recorded.position


@dataclass
class Log:
    """Three users in each partition, then the poison (partition POISONED), then three more
    users in each partition: the later ones of POISONED wait behind it."""

    before: list[uuid.UUID] = field(default_factory=list)
    after: dict[int, list[uuid.UUID]] = field(default_factory=dict)
    poison: uuid.UUID = field(default_factory=uuid.uuid4)
    position: int = 0


async def poisoned_log(engine: AsyncEngine, store: EventStore) -> Log:
    log = Log()
    use_keys(engine, KEY)
    for p in range(PARTITIONS):
        for _ in range(3):
            log.before.append(sid := user_in(p))
            await register(store, sid)
    use_keys(engine, STRANGER)
    log.poison = user_in(POISONED)
    log.position = await register(store, log.poison)
    use_keys(engine, KEY)  # the deployment's keys: the poison's does not open
    for p in range(PARTITIONS):
        log.after[p] = [user_in(p) for _ in range(3)]
        for sid in log.after[p]:
            await register(store, sid)
    return log


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    harness = await open_api(engine)
    try:
        yield harness
    finally:
        await harness.client.aclose()
        attach(engine, None)


def new_worker(
    engine: AsyncEngine, store: EventStore, *, batch_size: int = 50, max_attempts: int = ATTEMPTS
) -> ProjectionWorker:
    return ProjectionWorker(
        engine,
        store,
        UserProjection(User, OAuthAccount),
        partitions=PARTITIONS,
        batch_size=batch_size,
        lease_ttl=1.5,
        max_attempts=max_attempts,
        retry_backoff=0.02,
        retry_backoff_max=0.1,
    )


@contextlib.asynccontextmanager
async def running(worker: ProjectionWorker) -> AsyncIterator[ProjectionWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.shut_down(task, grace=5)


async def statuses(engine: AsyncEngine, store: EventStore) -> dict[int, PartitionStatus]:
    return {s.partition: s for s in await projection_status(engine, store) if s.name == "users"}


async def failed_partition(engine: AsyncEngine, store: EventStore) -> PartitionStatus | None:
    found = await statuses(engine, store)
    return found[POISONED] if found and found[POISONED].state == "failed" else None


async def projected(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set(await conn.scalars(select(User.__table__.c.id)))


async def registry(
    database_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `registry` command line, off the event loop: the worker projecting in this
    process must go on meanwhile (on SQLite a blocked loop would hold its write lock)."""
    env = {**os.environ, "REGISTRY_DATABASE_URL": database_url}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "registry.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_poison_event_fails_its_partition_only_and_retry_recovers_it(
    engine: AsyncEngine, database_url: str, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    store = api.store
    log = await poisoned_log(engine, store)
    caplog.set_level(logging.INFO, logger="registry.projections")
    worker = new_worker(engine, store)
    async with running(worker):
        status = await eventually(
            lambda: failed_partition(engine, store),
            timeout=20,
            interval=0.03,
            message="the poisoned partition to fail",
        )
        failure = status.failure
        assert failure is not None
        assert failure["position"] == log.position
        assert failure["stream_id"] == log.poison
        assert failure["stream_version"] == 1
        assert failure["event_type"] == "UserRegistered"
        assert failure["reason"].startswith("MasterKeyError: the data key of stream")
        assert failure["attempts"] == ATTEMPTS
        assert status.position < log.position  # the checkpoint stops right before it

        # every other partition projected everything, also what came after the poison
        others = set(log.before) | {s for p, ids in log.after.items() if p != POISONED for s in ids}
        await eventually(
            lambda: _contains(engine, others),
            timeout=20,
            interval=0.03,
            message="the other users projected",
        )
        assert not set(log.after[POISONED]) & await projected(engine)
        late = user_in(0)  # and keeps projecting while the partition is failed
        await register(store, late)
        await eventually(
            lambda: _contains(engine, {late}),
            timeout=20,
            interval=0.03,
            message="the late user projected",
        )

        # told once per change of state, not once per attempt
        records = [r for r in caplog.records if getattr(r, "partition", None) == POISONED]
        assert [r.levelname for r in records if "failed" in r.getMessage()] == [
            "WARNING",
            "ERROR",
        ]
        assert all(getattr(r, "position", log.position) == log.position for r in records)
        assert "batch failed; retrying" not in caplog.text

        # what an operator sees
        report = await registry(database_url, "status", "--json")
        assert report.returncode == 0, report.stderr
        [row] = [p for p in json.loads(report.stdout)["projections"] if p["partition"] == POISONED]
        assert row["state"] == "failed"
        assert row["failure"]["position"] == log.position
        text = (await registry(database_url, "status")).stdout
        assert f"FAILED at position {log.position} (UserRegistered of stream {log.poison}" in text
        assert "MasterKeyError" in text
        body = (await api.client.get("/projections")).json()
        [part] = [p for p in body["partitions"] if p["partition"] == POISONED]
        assert part["state"] == "failed"
        assert part["failure"]["stream_id"] == str(log.poison)
        assert {p["state"] for p in body["partitions"] if p["partition"] != POISONED} == {"ok"}
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["projections"].startswith(
            f"failed: users/{POISONED} at position {log.position} (MasterKeyError)"
        )
        metrics = (await api.client.get("/metrics")).text
        assert 'registry_projection_failed_partitions{projection="users"} 1' in metrics
        assert (
            f'registry_projection_partition_failed{{projection="users",partition="{POISONED}"}} 1'
            in metrics
        )

        # a retry without the fix fails again, after a fresh round of attempts
        caplog.clear()
        out = await registry(
            database_url, "projections", "retry", "users", "--partition", str(POISONED)
        )
        assert out.returncode == 0, out.stderr
        assert f"failure at position {log.position} cleared" in out.stdout
        await eventually(
            lambda: _logged(caplog, "partition failed"),
            timeout=20,
            interval=0.03,
            message="the failure logged",
        )
        await eventually(
            lambda: failed_partition(engine, store),
            timeout=20,
            interval=0.03,
            message="the poisoned partition to fail",
        )

        # the fix (the key it was sealed with, as a previous key), then retry: it recovers
        use_keys(engine, KEY, STRANGER)
        out = await registry(database_url, "projections", "retry")  # every failed partition
        assert out.returncode == 0, out.stderr
        await eventually(
            lambda: _contains(engine, {log.poison, *log.after[POISONED]}),
            timeout=20,
            interval=0.03,
            message="the poisoned partition's users projected",
        )
        found = await eventually(
            lambda: _all_caught_up(engine, store),
            timeout=20,
            interval=0.03,
            message="every partition caught up",
        )
        assert {s.state for s in found.values()} == {"ok"}
    assert (await api.client.get("/readyz")).status_code == 200
    metrics = (await api.client.get("/metrics")).text
    assert 'registry_projection_failed_partitions{projection="users"} 0' in metrics
    assert (
        "no failed partition to retry"
        in (await registry(database_url, "projections", "retry")).stdout
    )


async def test_skip_moves_past_exactly_one_event_and_is_recorded(
    engine: AsyncEngine, database_url: str, api: Api
) -> None:
    store = api.store
    log = await poisoned_log(engine, store)
    worker = new_worker(engine, store, max_attempts=1)
    async with running(worker):
        await eventually(
            lambda: failed_partition(engine, store),
            timeout=20,
            interval=0.03,
            message="the poisoned partition to fail",
        )

        # only the event the partition stopped on can be skipped, and only on confirmation
        skip = ["projections", "skip", "users", "--partition", str(POISONED), "--reason"]
        wrong = await registry(
            database_url, *skip, "x", "--position", str(log.position + 1), "--yes"
        )
        assert wrong.returncode == 3
        assert "applies position" in wrong.stderr
        declined = await registry(
            database_url, *skip, "x", "--position", str(log.position), stdin="n\n"
        )
        assert declined.returncode != 0
        assert f"position {log.position}, UserRegistered of stream {log.poison}" in declined.stdout
        assert "MasterKeyError" in declined.stdout
        assert await failed_partition(engine, store) is not None  # nothing changed

        why = "restored from another deployment"
        done = await registry(
            database_url, *skip, why, "--position", str(log.position), stdin="y\n"
        )
        assert done.returncode == 0, done.stderr
        assert f"skipped position {log.position} of users partition {POISONED}" in done.stdout

        # exactly that event: everything after it in the partition is projected, it is not
        await eventually(
            lambda: _contains(engine, set(log.after[POISONED])),
            timeout=20,
            interval=0.03,
            message="the users after the poison projected",
        )
        await eventually(
            lambda: _all_caught_up(engine, store),
            timeout=20,
            interval=0.03,
            message="every partition caught up",
        )
        assert log.poison not in await projected(engine)

    report = json.loads((await registry(database_url, "status", "--json")).stdout)
    [record] = report["skipped"]
    assert record["position"] == log.position
    assert record["stream_id"] == str(log.poison)
    assert record["note"] == "restored from another deployment"
    assert record["reason"].startswith("MasterKeyError")
    assert "@" in record["skipped_by"]
    assert record["skipped_at"]
    assert all(p["state"] == "ok" for p in report["projections"])
    text = (await registry(database_url, "status")).stdout
    assert f"skipped: projection users partition {POISONED} position {log.position}" in text
    body = (await api.client.get("/projections")).json()
    assert [s["position"] for s in body["skipped"]] == [log.position]
    assert (
        'registry_projection_skipped_events{projection="users"} 1'
        in (await api.client.get("/metrics")).text
    )

    # a skip is refused when the event is not the next one (here: nothing left at all)
    async with engine.begin() as conn:
        with pytest.raises(ProjectionError, match="no event left"):
            await failures.skip(conn, "users", POISONED, log.position, by="t", note="again")


async def test_a_failure_mid_batch_is_narrowed_to_its_event(engine: AsyncEngine, api: Api) -> None:
    """The poison sits after other events of its own partition in the same batch (and, on
    PostgreSQL, in one batch with every other partition): what precedes it is applied."""
    store = api.store
    use_keys(engine, KEY)
    early = [user_in(POISONED) for _ in range(5)]
    for sid in early:
        await register(store, sid)
        changed = UserEmailChanged(email=f"new-{sid.hex[:8]}@example.com")
        await store.append(sid, [changed], expected_version=1)
    log = await poisoned_log(engine, store)
    worker = new_worker(engine, store, batch_size=500, max_attempts=2)
    async with running(worker):
        status = await eventually(
            lambda: failed_partition(engine, store),
            timeout=20,
            interval=0.03,
            message="the poisoned partition to fail",
        )
    assert status.failure is not None
    assert status.failure["position"] == log.position
    assert set(early) <= await projected(engine)
    async with engine.connect() as conn:
        emails = set(await conn.scalars(select(User.__table__.c.email)))
    assert {f"new-{sid.hex[:8]}@example.com" for sid in early} <= emails


async def test_a_failure_reason_never_carries_sql_parameters(database_url: str) -> None:
    engine = create_async_engine(database_url)  # an app's engine: parameters not hidden
    async with engine.begin() as conn:
        await conn.run_sync(projection_checkpoints.create)
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(
                insert(projection_checkpoints).values(
                    name="SECRET-PARAM-VALUE", partition=0, partitions=None, tx_id=0, position=0
                )
            )
    await engine.dispose()
    assert "SECRET-PARAM-VALUE" in str(caught.value)  # SQLAlchemy's own text has it
    reason = failures.describe(caught.value)
    assert "SECRET-PARAM-VALUE" not in reason
    assert "INSERT" not in reason
    # the driver's exception and first line: which constraint, not which values
    assert reason.split(":")[0] in ("IntegrityError", "NotNullViolationError"), reason
    assert "partitions" in reason
    assert "\n" not in reason


async def _contains(engine: AsyncEngine, ids: set[uuid.UUID]) -> bool:
    return ids <= await projected(engine)


async def _all_caught_up(
    engine: AsyncEngine, store: EventStore
) -> dict[int, PartitionStatus] | None:
    found = await statuses(engine, store)
    return found if found and all(s.lag_events == 0 for s in found.values()) else None


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)
