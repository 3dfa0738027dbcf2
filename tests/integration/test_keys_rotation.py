"""Master-key rotation on SQLite and PostgreSQL: online (processes with both keys keep reading
and writing while it runs), resumable after a crash, every user reads back afterwards (log and
read model), and the old key no longer works."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine
from events.crypto import Keyring, MasterKey, MasterKeyError, verify
from events.keyops import keys_to_rotate, rotate
from events.tables import data_keys
from registry.domain.commands import RegisterUser, UpdateUser
from registry.service.handlers import CommandHandlers
from registry.service.keys import enable
from tests.support.keys import (
    cli,
    erase,
    log_contents,
    populate,
    project,
    read_model,
    read_streams,
    settings_for,
)

OLD, NEW = MasterKey.generate(), MasterKey.generate()


@pytest.fixture
async def other_engines() -> AsyncIterator[list[AsyncEngine]]:
    """Engines of other processes (each has its own keys attached)."""
    made: list[AsyncEngine] = []
    yield made
    for eng in made:
        await eng.dispose()


async def process(database_url: str, made: list[AsyncEngine], *keys: MasterKey) -> AsyncEngine:
    """Another process started with REGISTRY_MASTER_KEY=keys[0] and the rest as previous."""
    eng = create_engine(database_url)
    made.append(eng)
    await enable(eng, settings_for(database_url, keys[0], previous=keys[1:]))
    return eng


async def wrapped_by(engine: AsyncEngine) -> dict[str | None, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(data_keys.c.master_key_id, func.count()).group_by(data_keys.c.master_key_id)
        )
        return {r[0]: r[1] for r in rows}


async def test_rotation_resumes_runs_online_and_retires_the_old_key(
    database_url: str, engine: AsyncEngine, other_engines: list[AsyncEngine]
) -> None:
    await enable(engine, settings_for(database_url, OLD))
    pop = await populate(engine, 7)
    victim = pop.ids[-1]
    await erase(engine, victim)
    assert await wrapped_by(engine) == {OLD.key_id: 6, None: 1}

    # the rolling restart: every process gets both keys (old active, then new active)
    both_old_first = await process(database_url, other_engines, OLD, NEW)
    both = await process(database_url, other_engines, NEW, OLD)
    before = await read_streams(EventStore(both), pop.ids)

    # a rotation that dies after its first batch of 4 keys: that batch stays done
    def crash(done: int, total: int) -> None:
        assert (done, total) == (4, 6)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await rotate(both, Keyring(NEW, [OLD]), batch_size=4, on_progress=crash)
    assert await wrapped_by(engine) == {NEW.key_id: 4, OLD.key_id: 2, None: 1}

    # meanwhile, processes with both keys read everyone and keep writing
    assert await read_streams(EventStore(both_old_first), pop.ids) == before
    handlers = CommandHandlers(both, EventStore(both))
    for sid in pop.ids[:6]:
        await handlers.handle(UpdateUser(user_id=sid, is_verified=True))
    newcomer = (
        await handlers.handle(RegisterUser(email="new@example.com", hashed_password="h"))
    ).user_id
    await handlers.handle(UpdateUser(user_id=pop.ids[0], email="moved@example.com"))
    assert await wrapped_by(engine) == {NEW.key_id: 5, OLD.key_id: 2, None: 1}
    await project(both)
    expected_model = await read_model(engine)
    ids = [*pop.ids, newcomer]
    expected_log = await read_streams(EventStore(both), ids)

    # run again, as an operator would: it finishes the rest
    env: dict[str, str | None] = {
        "REGISTRY_DATABASE_URL": database_url,
        "REGISTRY_MASTER_KEY": NEW.encoded(),
        "REGISTRY_PREVIOUS_MASTER_KEYS": OLD.encoded(),
    }
    code, out, err = await cli("rotate-master-key", "--batch-size", "1", "--json", env=env)
    assert code == 0, (out, err)
    assert json.loads(out) == {"master_key_id": NEW.key_id, "rewrapped": 2}
    assert NEW.encoded() not in out + err
    assert OLD.encoded() not in out + err
    assert await wrapped_by(engine) == {NEW.key_id: 7, None: 1}  # the erased key stays erased
    code, out, err = await cli("rotate-master-key", env=env)  # nothing left: changes nothing
    assert code == 0, (out, err)
    assert "re-wrapped 0 data keys" in out, (out, err)

    # a process with only the new key reads every user back, log and read model
    only_new = await process(database_url, other_engines, NEW)
    assert await read_streams(EventStore(only_new), ids) == expected_log
    assert expected_log[pop.ids[0]][-1][2]["email"] == "moved@example.com"
    assert all(r[3] for r in expected_log[victim])  # erased, still
    await project(only_new)
    assert await read_model(only_new) == expected_model
    stored = await log_contents(engine)
    assert not any(s in stored for s in pop.secrets)

    # the old key no longer works: refused at start, in-process and by the real commands
    with pytest.raises(MasterKeyError, match="does not match"):
        await verify(engine, Keyring(OLD))
    stale = create_engine(database_url)
    other_engines.append(stale)
    with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY"):
        await enable(stale, settings_for(database_url, OLD))
    code, out, err = await cli(
        "replay", env={"REGISTRY_DATABASE_URL": database_url, "REGISTRY_MASTER_KEY": OLD.encoded()}
    )
    assert code == 1, (out, err)
    assert "registry: error:" in err, (out, err)
    assert "does not match" in err, (out, err)


async def test_rotation_while_writers_run(
    database_url: str, engine: AsyncEngine, other_engines: list[AsyncEngine]
) -> None:
    await enable(engine, settings_for(database_url, OLD))
    pop = await populate(engine, 6)
    writer = await process(database_url, other_engines, NEW, OLD)
    handlers = CommandHandlers(writer, EventStore(writer))

    async def write() -> list[uuid.UUID]:
        made = []
        for i in range(6):
            await handlers.handle(UpdateUser(user_id=pop.ids[i], is_superuser=True))
            out = await handlers.handle(
                RegisterUser(email=f"during{i}@example.com", hashed_password="h")
            )
            made.append(out.user_id)
        return made

    rotator = await process(database_url, other_engines, NEW, OLD)
    rotation, made = await asyncio.gather(
        rotate(rotator, Keyring(NEW, [OLD]), batch_size=1), write()
    )
    assert rotation.rewrapped == 6
    assert rotation.key_id == NEW.key_id
    assert await keys_to_rotate(engine, Keyring(NEW)) == 0
    assert await wrapped_by(engine) == {NEW.key_id: 12}
    only_new = await process(database_url, other_engines, NEW)
    streams = await read_streams(EventStore(only_new), [*pop.ids, *made])
    assert [s[-1][1] for s in list(streams.values())[:6]] == ["UserSuperuserGranted"] * 6
    assert [s[0][2]["email"] for s in list(streams.values())[6:]] == [
        f"during{i}@example.com" for i in range(6)
    ]


async def test_rotation_without_the_old_key_changes_nothing(
    database_url: str, engine: AsyncEngine
) -> None:
    await enable(engine, settings_for(database_url, OLD))
    await populate(engine, 3)
    with pytest.raises(MasterKeyError, match="REGISTRY_PREVIOUS_MASTER_KEYS"):
        await rotate(engine, Keyring(NEW), batch_size=1)
    assert await wrapped_by(engine) == {OLD.key_id: 3}
    code, out, err = await cli(
        "rotate-master-key",
        env={"REGISTRY_DATABASE_URL": database_url, "REGISTRY_MASTER_KEY": NEW.encoded()},
    )
    assert code == 1, (out, err)
    assert "REGISTRY_PREVIOUS_MASTER_KEYS" in err, (out, err)
    assert await wrapped_by(engine) == {OLD.key_id: 3}
