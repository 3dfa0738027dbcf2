"""Helpers of the master-key tests: a populated registry, raw table contents, the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, MetaData, Table, func, inspect, select
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, RecordedEvent, UserErased
from events.crypto import MasterKey, shred
from events.tables import data_keys, events
from projections import OAuthAccount, User, UserProjection
from projections.replay import replay
from registry.domain.commands import LinkOAuthAccount, RegisterUser, UpdateUser
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers
from registry.settings import Settings

REGISTRY = str(Path(sys.executable).with_name("registry"))
USERS, ACCOUNTS = User.__table__, OAuthAccount.__table__


def settings_for(
    url: str, key: MasterKey | None, previous: tuple[MasterKey, ...] = (), **more: object
) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "master_key": SecretStr(key.encoded()) if key is not None else None,
        "previous_master_keys": [SecretStr(k.encoded()) for k in previous],
        **more,
    }
    return Settings(**values)


@dataclass
class Population:
    """Users written through the command handlers, and every secret they hold."""

    ids: list[uuid.UUID] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


async def populate(
    engine: AsyncEngine, n: int, *, tag: str = "", handlers: CommandHandlers | None = None
) -> Population:
    """`n` users (registered, half with a changed email, a quarter with a changed password, a
    third with an OAuth account) through the one write path, then the read model built by a
    replay."""
    await ensure_schema(engine, User, OAuthAccount)
    handlers = handlers or CommandHandlers(engine, EventStore(engine))
    pop = Population()
    for i in range(n):
        email = f"person{i}{tag}@example.com"
        hashed = f"$argon2id$v=19$m=65536,t=3,p=4$salt{i}{tag}$hashvalue{i}{tag}"
        out = await handlers.handle(RegisterUser(email=email, hashed_password=hashed))
        pop.ids.append(out.user_id)
        pop.secrets += [email, hashed]
        if i % 2 == 0:
            new_email = f"renamed{i}{tag}@example.org"
            await handlers.handle(UpdateUser(user_id=out.user_id, email=new_email))
            pop.secrets.append(new_email)
        if i % 4 == 1:
            rehashed = f"$argon2id$v=19$m=65536,t=3,p=4$salt{i}{tag}$rehashed{i}{tag}"
            await handlers.handle(UpdateUser(user_id=out.user_id, hashed_password=rehashed))
            pop.secrets.append(rehashed)
        if i % 3 == 0:
            token = f"ya29.accesstoken{i}{tag}"
            await handlers.handle(
                LinkOAuthAccount(
                    user_id=out.user_id,
                    oauth_name="google",
                    access_token=SecretStr(token),
                    account_id=f"acct{i}{tag}",
                    account_email=f"oauth{i}{tag}@gmail.com",
                )
            )
            pop.secrets += [token, f"oauth{i}{tag}@gmail.com"]
    await project(engine)
    return pop


async def erase(engine: AsyncEngine, sid: uuid.UUID) -> None:
    """What the erase command does: UserErased and the key destroyed in one transaction."""
    store = EventStore(engine)
    async with engine.begin() as conn:
        version = await store.stream_version(sid, conn=conn)
        await store.append(sid, [UserErased()], expected_version=version, conn=conn)
        await shred(conn, store.crypto, sid)
    store.committed()


async def project(engine: AsyncEngine) -> None:
    await replay(engine, UserProjection(User, OAuthAccount), batch_size=50)


def _tables(sync_conn: Connection) -> list[Table]:
    meta = MetaData()
    with warnings.catch_warnings():  # expression indexes (lower(email)) are not reflected
        warnings.simplefilter("ignore", SAWarning)
        meta.reflect(sync_conn)
    return list(meta.sorted_tables)


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows of every table in the database (whoever made it)."""
    async with engine.connect() as conn:
        tables = await conn.run_sync(_tables)
        return {
            t.name: int(await conn.scalar(select(func.count()).select_from(t)) or 0) for t in tables
        }


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def raw_contents(engine: AsyncEngine) -> str:
    """Every stored value of every table as text (bytes as text too, to catch clear values)."""
    parts: list[str] = []
    async with engine.connect() as conn:
        for table in await conn.run_sync(_tables):
            for row in await conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        parts.append(bytes(value).decode("latin-1"))
                    else:
                        parts.append(str(value))
    return "\n".join(parts)


async def log_contents(engine: AsyncEngine) -> str:
    """Every stored value of the events and data keys tables, as text."""
    async with engine.connect() as conn:
        rows = [*await conn.execute(select(events)), *await conn.execute(select(data_keys))]
    return "\n".join(
        bytes(v).decode("latin-1") if isinstance(v, bytes | memoryview) else str(v)
        for row in rows
        for v in row
    )


async def read_model(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        users = {r["id"]: dict(r) for r in (await conn.execute(select(USERS))).mappings()}
        oauth = {r["id"]: dict(r) for r in (await conn.execute(select(ACCOUNTS))).mappings()}
    return {"users": users, "oauth": oauth}


async def read_streams(store: EventStore, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """Each stream's events as (version, type, payload), opened."""

    def shape(r: RecordedEvent) -> tuple[int, str, dict[str, Any], bool]:
        return (r.stream_version, r.event_type, r.event.model_dump(mode="json"), r.erased)

    return {sid: [shape(r) for r in await store.read_stream(sid)] for sid in ids}


async def cli(
    *args: str, env: dict[str, str | None], cwd: Path | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run `registry ARGS…` as a user would: (exit code, stdout, stderr)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    full.update({k: v for k, v in env.items() if v is not None})
    proc = await asyncio.create_subprocess_exec(
        REGISTRY,
        *args,
        env=full,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()
