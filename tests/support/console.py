"""What the console's browser tests drive: a `registry serve` process on a database of its
own (SQLite file or a fresh PostgreSQL database) with NATS, the `registry send` command line,
a poisoned read-model row, and the system's headless chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from sqlalchemy.engine import make_url

from events import EventStore, UserRegistered, create_engine
from events.crypto import Crypto, Keyring, MasterKey, attach

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = Path(sys.executable).with_name("registry")
NATS_URL = os.environ.get("REGISTRY_TEST_NATS_URL", "nats://127.0.0.1:4222")
PG_BASE_URL = os.environ.get(
    "REGISTRY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
CHROMIUM = Path(os.environ.get("REGISTRY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("REGISTRY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
START_TIMEOUT = 60.0
#: what the poison trigger answers (the failure reason the console must show)
POISON_MESSAGE = "console test: this row is refused"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_dsn(PG_BASE_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def database(backend: str, directory: Path) -> Iterator[str]:
    """A new, empty database on `backend`; its URL. A PostgreSQL one is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'registry.db'}"
        return
    name = f"registry_console_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_BASE_URL).set(database=name).render_as_string(False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Served:
    """A running `registry serve` and how to reach it."""

    proc: subprocess.Popen[str]
    database_url: str
    env: dict[str, str]
    token: str
    base: str = ""
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Iterable[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    self.base = found.group(1)
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"registry serve did not start: {''.join(self.lines)}")

    def send(self, command: str, payload: str) -> dict[str, Any]:
        """`registry send COMMAND PAYLOAD` over this server's bus; the accepted reply."""

        done = subprocess.run(
            [str(REGISTRY), "send", command, payload],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        reply: dict[str, Any] = json.loads(done.stdout)
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def serve(database_url: str, directory: Path) -> Served:
    """Start `registry serve` on `database_url` with NATS (its own bus prefix), a known token,
    and a projector that gives up on an event after two quick attempts."""
    token = f"console-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(
        REGISTRY_DATABASE_URL=database_url,
        REGISTRY_API_TOKENS=token,
        REGISTRY_PORT=str(free_port()),
        REGISTRY_BROKER_URL=NATS_URL,
        REGISTRY_BUS_PREFIX=f"console-{uuid.uuid4().hex[:10]}",
        REGISTRY_MASTER_KEY=os.environ["REGISTRY_MASTER_KEY"],  # set by tests/conftest.py
        REGISTRY_PROJECTION_MAX_ATTEMPTS="2",
        REGISTRY_PROJECTION_RETRY_BACKOFF="0.05",
        REGISTRY_LEASE_TTL="2",
        REGISTRY_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [str(REGISTRY), "serve"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(proc, database_url, env, token)
    served.wait_until_listening()
    return served


_PG_POISON = [
    f"""CREATE FUNCTION console_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.email LIKE 'poison-%' THEN
            RAISE EXCEPTION '{POISON_MESSAGE}';
        END IF;
        RETURN NEW;
    END $$""",
    'CREATE TRIGGER console_poison BEFORE INSERT ON "user" FOR EACH ROW '
    "EXECUTE FUNCTION console_poison()",
]
_SQLITE_POISON = (
    "CREATE TRIGGER console_poison BEFORE INSERT ON \"user\" WHEN NEW.email LIKE 'poison-%' "
    f"BEGIN SELECT RAISE(ABORT, '{POISON_MESSAGE}'); END"
)


def _run_pg(url: str, statements: list[str]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(_dsn(url))
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def poison(database_url: str) -> None:
    """From now on the read model refuses any user whose email starts with `poison-`: the
    projector cannot apply their registration (a fault outside the log, fixed by `cure`)."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(make_url(database_url).database or "") as conn:
            conn.execute(_SQLITE_POISON)
    else:
        _run_pg(database_url, _PG_POISON)


def cure(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        with sqlite3.connect(make_url(database_url).database or "") as conn:
            conn.execute("DROP TRIGGER console_poison")
    else:
        _run_pg(
            database_url,
            ['DROP TRIGGER console_poison ON "user"', "DROP FUNCTION console_poison()"],
        )


def browser() -> webdriver.Chrome:
    """Headless chromium from the system packages, driven by its chromedriver."""

    missing = (
        f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium "
        "chromium-driver; .ci/browser.sh does it)"
    )
    assert CHROMIUM.exists(), missing
    assert CHROMEDRIVER.exists(), missing
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,900",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


async def append_unreadable(database_url: str) -> int:
    """Append a registration sealed by a master key this deployment never had (an event
    restored from elsewhere): nobody here can read it. Its position."""

    engine = create_engine(database_url)
    try:
        attach(engine, Crypto(Keyring(MasterKey.generate())))
        [recorded] = await EventStore(engine).append(
            uuid.uuid4(),
            [
                UserRegistered(
                    email=f"stranger-{uuid.uuid4().hex[:8]}@example.org", hashed_password="h"
                )
            ],
            expected_version=0,
        )
        return recorded.position
    finally:
        await engine.dispose()
