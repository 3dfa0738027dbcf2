"""Figure 6: `GET /users/{id}` over HTTP, the read API vs a bare FastAPI primary-key select.

Each app runs in its own uvicorn process (one worker, same settings) on the same database and
`user` table; this process drives both, alternately, with 8 concurrent httpx callers asking
for random existing users. Ours: `registry.api.create_app` (bearer auth, the read model's
`get_user` with OAuth accounts, the response model). Bare: one route doing
`SELECT ... FROM "user" WHERE id = :id` and returning the row without the password hash.
Goal >= 0.8x.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from sqlalchemy import select

from bench.common import (
    CALLERS,
    Options,
    Row,
    create_schema,
    ratio_row,
    scratch_database,
    side_by_side,
)
from bench.seed import PER_STREAM, seed
from events import EventStore, create_engine
from projections import OAuthAccount, User, UserProjection
from projections.replay import replay
from registry.api import create_app
from registry.bootstrap import build
from registry.settings import Settings

TOKEN = "bench-token"
USERS = 2_000
GOAL = 0.8


def bare_app(url: str) -> FastAPI:
    engine = create_engine(url)
    table = User.__table__
    columns = [c for c in table.c if c.key != "hashed_password"]
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def get_user(user_id: uuid.UUID) -> dict[str, Any]:
        async with engine.connect() as conn:
            row = (await conn.execute(select(*columns).where(table.c.id == user_id))).first()
        if row is None:
            raise HTTPException(404)
        return dict(row._mapping)  # noqa: SLF001  # SQLAlchemy's public Row API

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def our_app(url: str) -> FastAPI:
    return create_app(build(Settings(database_url=url, api_tokens=[TOKEN])))


def serve(which: str, url: str, port: int) -> None:
    app = our_app(url) if which == "ours" else bare_app(url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def server(which: str, url: str) -> AsyncIterator[str]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.http", which, url, str(port)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{which} server did not start")
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        await proc.wait()


async def run(opts: Options) -> list[Row]:
    async with scratch_database(opts.database_url, "http") as url:
        engine = create_engine(url)
        try:
            await create_schema(engine)
            await seed(EventStore(engine), USERS * PER_STREAM)
            await replay(engine, UserProjection(User, OAuthAccount), in_place=True)
            async with engine.connect() as conn:
                ids = [str(i) for i in (await conn.scalars(select(User.__table__.c.id))).all()]
        finally:
            await engine.dispose()
        async with (
            server("ours", url) as ours_url,
            server("bare", url) as bare_url,
            httpx.AsyncClient(
                headers={"Authorization": f"Bearer {TOKEN}"},
                limits=httpx.Limits(max_connections=CALLERS),
            ) as client,
        ):

            def getter(base: str) -> Callable[[int], Awaitable[None]]:
                async def get(_: int) -> None:
                    r = await client.get(f"{base}/users/{random.choice(ids)}")
                    if r.status_code != 200:
                        raise RuntimeError(f"{base}: HTTP {r.status_code} {r.text[:200]}")

                return get

            a, b = await side_by_side(getter(ours_url), getter(bare_url), opts)
    return [
        ratio_row(
            "6 GET /users/{id} vs bare FastAPI PK select",
            a,
            b,
            GOAL,
            unit="req/s",
            note=f"uvicorn 1 process each, {CALLERS} httpx callers, {len(ids):,} users",
        )
    ]


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
