"""Master keys at start-up, on SQLite and PostgreSQL: a wrong or missing key is a clear error
before anything is written (in-process entry points and the real `registry` commands); the
embedded default keeps a generated key in an owner-only file and reuses it; the adapter and
columns marked personal are sealed with the configured key."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from events import EventStore, create_engine
from events.crypto import Crypto, Keyring, MasterKey, MasterKeyError, attach, crypto_of
from events.tables import events
from projections import BaseUserTableUUID, OAuthAccount, User
from registry.adapter.projector import run_projector
from registry.bootstrap import build
from registry.cli import main
from registry.domain.commands import RegisterUser
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers
from registry.service.keys import (
    enable,
    load_keyring,
    personal_columns,
    read_key_file,
    write_key_file,
)
from registry.settings import Settings, get_settings
from tests.support.adapter import UserDatabase
from tests.support.keys import (
    cli,
    log_contents,
    populate,
    raw_contents,
    read_streams,
    settings_for,
    table_counts,
    table_names,
)


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Environment changes seen by `get_settings()` (the adapter's source), undone after."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def assert_no_key_in(text: str, *keys: MasterKey) -> None:
    for key in keys:
        assert key.encoded() not in text


async def test_a_wrong_master_key_is_refused_at_every_start_and_nothing_is_written(
    database_url: str, engine: AsyncEngine, tmp_path: Path, fresh_settings: pytest.MonkeyPatch
) -> None:
    good, wrong = MasterKey.generate(), MasterKey.generate()
    work = tmp_path / "cwd"
    work.mkdir()
    await enable(engine, settings_for(database_url, good))
    pop = await populate(engine, 4)
    counts, contents = await table_counts(engine), await raw_contents(engine)
    assert counts["event_data_keys"] == 4
    assert counts["user"] == 4

    bad = settings_for(database_url, wrong)
    other = create_engine(database_url)
    try:
        with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY") as caught:
            await enable(other, bad)
        assert good.key_id in str(caught.value)
        assert wrong.key_id in str(caught.value)
        assert crypto_of(other) is None  # not attached: nothing can be sealed with it
        with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY"):
            async with run_projector(other, User, OAuthAccount, settings=bad):
                pytest.fail("the projector started with a wrong master key")
        container = build(bad)
        try:
            with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY"):
                await container.encrypt()
            with pytest.raises(MasterKeyError):  # the handlers' safety net
                await container.handlers().handle(RegisterUser(email="x@example.com"))
        finally:
            await container.aclose()
    finally:
        await other.dispose()

    # the adapter (settings from the environment): its first write checks the key
    fresh_settings.setenv("REGISTRY_MASTER_KEY", wrong.encoded())
    adapter_engine = create_engine(database_url)
    try:
        async with AsyncSession(adapter_engine) as session:
            db = UserDatabase(session, User, OAuthAccount)
            with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY"):
                await db.create({"email": "new@example.com", "hashed_password": "h"})
            assert await db.get(pop.ids[0]) is not None  # reads of the read model still work
    finally:
        await adapter_engine.dispose()

    # the real commands, as an operator would start them
    env: dict[str, str | None] = {
        "REGISTRY_DATABASE_URL": database_url,
        "REGISTRY_MASTER_KEY": wrong.encoded(),
        "REGISTRY_API_TOKENS": "token",
    }
    runs = await asyncio.gather(
        cli("serve", "--port", "0", env=env, cwd=work),
        cli("worker", env=env, cwd=work),
        cli("replay", env=env, cwd=work),
        cli("consume", env={**env, "REGISTRY_BROKER_URL": "nats://127.0.0.1:4222"}, cwd=work),
        cli("import-users", "--from", f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", env=env),
        cli("encrypt-events", env=env, cwd=work),
    )
    for code, out, err in runs:
        assert code == 1, (out, err)
        assert "registry: error:" in err, err
        assert "does not match" in err, err
        assert "REGISTRY_MASTER_KEY" in err
        assert_no_key_in(out + err, good, wrong)

    assert await table_counts(engine) == counts
    assert await raw_contents(engine) == contents
    assert list(os.listdir(work)) == []  # no key file, no database, no token file


async def test_a_missing_master_key_on_postgresql_is_a_clear_error_and_creates_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    settings = settings_for(pg_url, None, master_key_file=tmp_path / "none.key")
    with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY is not set"):
        load_keyring(settings)
    env: dict[str, str | None] = {"REGISTRY_DATABASE_URL": pg_url, "REGISTRY_API_TOKENS": "t"}
    runs = await asyncio.gather(
        cli("serve", "--port", "0", env=env, cwd=tmp_path),
        cli("worker", env=env, cwd=tmp_path),
    )
    for code, out, err in runs:
        assert code == 1, (out, err)
        assert "registry: error:" in err, err
        assert "REGISTRY_MASTER_KEY is not set" in err, err
        assert "registry keygen" in err
    engine = create_engine(pg_url)
    try:
        assert await table_names(engine) == set()  # not even the schema
    finally:
        await engine.dispose()
    assert os.listdir(tmp_path) == []  # no key generated for PostgreSQL


async def test_the_embedded_default_keeps_a_generated_key_owner_only_and_reuses_it(
    tmp_path: Path,
) -> None:
    # `registry replay` with no configuration at all: SQLite and a key file in the directory
    code, out, err = await cli("replay", env={}, cwd=tmp_path)
    assert code == 0, (out, err)
    key_file = tmp_path / "registry.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = MasterKey.parse(key_file.read_text())
    assert f"generated a new master key into {key_file}" in err
    assert_no_key_in(out + err, key)

    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    settings = settings_for(url, None, master_key_file=key_file)
    assert load_keyring(settings).active == key  # reused, not replaced
    engine = create_engine(url)
    try:
        crypto = await enable(engine, settings)
        assert crypto.keyring.active == key
        pop = await populate(engine, 2)
        contents = await log_contents(engine)
        assert not any(s in contents for s in pop.secrets)  # sealed with the file's key
    finally:
        await engine.dispose()

    code, out, err = await cli("replay", env={}, cwd=tmp_path)  # the next start reuses it
    assert code == 0, (out, err)
    assert "generated" not in err
    assert MasterKey.parse(key_file.read_text()) == key
    assert sorted(os.listdir(tmp_path)) == ["registry.db", "registry.key"]


def test_key_files_are_created_owner_only_never_replaced_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "registry.key"
    first, second = MasterKey.generate(), MasterKey.generate()
    assert write_key_file(path, first)
    assert not write_key_file(path, second)  # another process made it first: kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.key"]
    settings = settings_for("postgresql+asyncpg://h/db", None, master_key_file=path)
    assert load_keyring(settings).active == first  # a file works on PostgreSQL too

    path.chmod(0o640)
    with pytest.raises(MasterKeyError, match=r"group or others \(mode 0640\).*chmod 600"):
        load_keyring(settings)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(MasterKeyError, match=r"REGISTRY_MASTER_KEY_FILE.*registry keygen"):
        load_keyring(settings)
    with pytest.raises(MasterKeyError, match="REGISTRY_MASTER_KEY is not a master key"):
        load_keyring(Settings(master_key=SecretStr("short")))
    with pytest.raises(MasterKeyError, match="REGISTRY_PREVIOUS_MASTER_KEYS"):
        load_keyring(
            Settings(master_key=SecretStr(first.encoded()), previous_master_keys=[SecretStr("x")])
        )


def test_keygen_into_a_file_keeps_an_existing_one_only_when_asked(tmp_path: Path) -> None:
    """What the docker-compose `keys` one-shot runs on every `up`."""

    path = tmp_path / "registry.key"
    runner = CliRunner()
    made = runner.invoke(main, ["keygen", "--output", str(path), "--keep-existing"])
    assert made.exit_code == 0, made.output
    key = read_key_file(path)
    assert key.encoded() not in made.output  # written, never printed
    again = runner.invoke(main, ["keygen", "--output", str(path), "--keep-existing"])
    assert again.exit_code == 0
    assert "kept" in again.output
    assert read_key_file(path) == key
    refused = runner.invoke(main, ["keygen", "--output", str(path)])
    assert refused.exit_code == 2
    assert "not replaced" in refused.output
    assert read_key_file(path) == key


class AppBase(DeclarativeBase):
    pass


class PatientUser(BaseUserTableUUID, AppBase):
    __tablename__ = "patient"
    phone: Mapped[str | None] = mapped_column(String(64), default=None, info={"personal": True})
    nickname: Mapped[str | None] = mapped_column(String(64), default=None)
    plan: Mapped[str | None] = mapped_column(String(64), default=None)


async def test_columns_marked_personal_and_configured_fields_are_sealed(
    database_url: str, engine: AsyncEngine
) -> None:
    assert personal_columns(PatientUser) == {"phone"}
    settings = settings_for(database_url, MasterKey.generate(), personal_fields="nickname")
    crypto = await enable(engine, settings, PatientUser)
    assert crypto.personal_profile == {"phone", "nickname"}
    await ensure_schema(engine, PatientUser)
    handlers = CommandHandlers(
        engine, EventStore(engine), profile_fields=frozenset({"phone", "nickname", "plan"})
    )
    profile = {"phone": "+44 7700 900123", "nickname": "Gracie", "plan": "gold-plan"}
    out = await handlers.handle(
        RegisterUser(email="patient@example.com", hashed_password="h", profile=profile)
    )
    contents = await log_contents(engine)
    assert "+44 7700 900123" not in contents
    assert "Gracie" not in contents
    assert "patient@example.com" not in contents
    assert "gold-plan" in contents  # not personal: stays queryable in the log
    (recorded,) = await EventStore(engine).read_stream(out.user_id)
    assert recorded.event.model_dump()["profile"] == profile


async def test_an_attached_crypto_is_kept_but_checked(
    database_url: str, engine: AsyncEngine
) -> None:
    own = Crypto(Keyring(MasterKey.generate()))
    attach(engine, own)
    settings = settings_for(database_url, MasterKey.generate())  # not used: the app chose
    assert await enable(engine, settings) is own
    await populate(engine, 1)

    other = create_engine(database_url)
    try:
        attach(other, Crypto(Keyring(MasterKey.generate())))
        with pytest.raises(MasterKeyError, match="does not match"):
            await enable(other, settings)
    finally:
        await other.dispose()


async def test_the_adapter_seals_with_the_configured_key(
    engine: AsyncEngine, fresh_settings: pytest.MonkeyPatch
) -> None:
    key = MasterKey.generate()
    fresh_settings.setenv("REGISTRY_MASTER_KEY", key.encoded())
    await ensure_schema(engine, User, OAuthAccount)

    async def create(i: int) -> uuid.UUID:
        async with AsyncSession(engine) as session:
            db = UserDatabase(session, User, OAuthAccount)
            user = await db.create({"email": f"u{i}@example.com", "hashed_password": f"hash-{i}"})
            return uuid.UUID(str(user.id))

    ids = await asyncio.gather(*(create(i) for i in range(5)))  # first uses at once: one check
    crypto = crypto_of(engine)
    assert crypto is not None
    assert crypto.keyring.active == key
    async with engine.connect() as conn:
        stored = str((await conn.execute(select(events.c.data, events.c.sealed))).all())
    assert "@example.com" not in stored
    assert "hash-" not in stored
    streams = await read_streams(EventStore(engine), ids)
    assert [streams[sid][0][2]["email"] for sid in ids] == [f"u{i}@example.com" for i in range(5)]
