"""`registry serve` as a user runs it: a subprocess in an empty directory with no configuration.

It migrates SQLite, generates a token (file mode 0600) and prints it, serves the API; users
written through the command handlers against the same file show up over HTTP; SIGTERM ends it
with exit code 0, no traceback, and the projection's checkpoint committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr

from events import EventStore, create_engine
from projections.status import projection_status
from registry.bus.channels import Channels
from registry.cli import main
from registry.domain.commands import LinkOAuthAccount, RegisterUser, UpdateUser
from registry.service.handlers import CommandHandlers
from registry.service.keys import enable
from registry.settings import Settings
from tests.support.processes import ROOT, Server, clean_env, free_port

pytestmark = pytest.mark.e2e

REGISTRY = Path(sys.executable).with_name("registry")
NATS_URL = os.environ.get("REGISTRY_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def run(*args: str, **env: str) -> Server:
        proc = subprocess.Popen(
            [str(REGISTRY), "serve", *args],
            cwd=tmp_path,
            env=clean_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server = Server(proc)
        started.append(server)
        return server

    yield run
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


async def write_users(db: Path, key_file: Path) -> list[tuple[str, int]]:
    """Register, update and link through the command handlers, on the server's SQLite file,
    sealed with the master key the server generated (as a second process would)."""

    url = f"sqlite+aiosqlite:///{db}"
    engine = create_engine(url)
    try:
        await enable(engine, Settings(database_url=url, master_key=None, master_key_file=key_file))
        handlers = CommandHandlers(engine, EventStore(engine))
        out = []
        for i in range(3):
            outcome = await handlers.handle(
                RegisterUser(
                    email=f"User{i}@Example.com", password=SecretStr(f"pw-{i}-secret-value")
                )
            )
            out.append((str(outcome.user_id), outcome.version))
        user_id = out[0][0]
        await handlers.handle(UpdateUser(user_id=uuid.UUID(user_id), is_verified=True))
        linked = await handlers.handle(
            LinkOAuthAccount(
                user_id=uuid.UUID(user_id),
                oauth_name="github",
                access_token=SecretStr("gho_SECRET_access"),
                account_id="42",
                account_email="user0@example.com",
            )
        )
        out[0] = (user_id, linked.version)
        return out
    finally:
        await engine.dispose()


async def lag_after_exit(db: Path) -> list[int]:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        return [s.lag_events for s in await projection_status(engine, EventStore(engine))]
    finally:
        await engine.dispose()


def test_serve_from_an_empty_directory(start: Callable[..., Server], tmp_path: Path) -> None:
    port = free_port()
    server = start(REGISTRY_PORT=str(port))
    token = server.wait_for_line(r"API token \(generated, kept in (.+)\): (\S+)").group(2)
    base = server.wait_for_line(r"listening on (http://\S+)").group(1)
    assert base == f"http://127.0.0.1:{port}"
    server.wait_for_line(rf"API docs: {re.escape(base)}/docs")

    token_file = tmp_path / ".registry-token"
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    db = tmp_path / "registry.db"
    assert db.exists()

    key_file = tmp_path / "registry.key"  # the embedded default's master key, owner-only
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in "".join(server.lines + server.stderr)

    written = asyncio.run(write_users(db, key_file))
    assert (
        b"user0@example.com"  # the canonical form the command stored
        not in sqlite3.connect(db)
        .execute("SELECT group_concat(data) FROM events")
        .fetchone()[0]
        .encode()
    )  # sealed at rest; the API below reads it back
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=20) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/users").status_code == 401
        for user_id, version in written:
            r = client.get(f"/users/{user_id}", params={"min_version": version}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == version
            assert "hashed_password" not in r.text
            assert "SECRET" not in r.text
        first = client.get(f"/users/{written[0][0]}", headers=headers).json()
        assert first["is_verified"] is True
        assert first["oauth_accounts"][0]["account_id"] == "42"
        page = client.get("/users", params={"email": "user1@example.COM"}, headers=headers)
        assert [u["email"] for u in page.json()["items"]] == ["user1@example.com"]
        history = client.get(f"/users/{written[0][0]}/history", headers=headers)
        assert history.status_code == 200
        assert "SECRET" not in history.text
        assert "$argon2" not in history.text
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = client.get("/metrics", headers=headers).text
        assert "registry_events_appended_total 5" in metrics
        assert client.get("/docs").status_code == 200

    assert server.stop() == 0
    assert "Traceback" not in "".join(server.stderr), "".join(server.stderr)
    assert asyncio.run(lag_after_exit(db))
    assert all(lag == 0 for lag in asyncio.run(lag_after_exit(db)))


def send(prefix: str, command: str, payload: dict[str, object]) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [str(REGISTRY), "send", command, json.dumps(payload)],
        env=clean_env(REGISTRY_BROKER_URL=NATS_URL, REGISTRY_BUS_PREFIX=prefix),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout)


async def drop_streams(prefix: str) -> None:
    ch = Channels(prefix)
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for name in (ch.nats_command_stream, ch.nats_event_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


def test_serve_with_nats_consumes_commands_and_counts_outcomes(
    start: Callable[..., Server],
) -> None:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"  # private subjects and streams on the shared server
    server = start(
        REGISTRY_PORT=str(free_port()),
        REGISTRY_BROKER_URL=NATS_URL,
        REGISTRY_BUS_PREFIX=prefix,
        REGISTRY_API_TOKENS="bus-token",
    )
    try:
        base = server.wait_for_line(r"listening on (http://\S+)").group(1)
        server.wait_for_line(r"bus: nats://")
        code, reply = send(prefix, "register", {"email": "Bus@Example.com", "password": "pw-1"})
        assert (code, reply["status"]) == (0, "accepted"), reply
        code, again = send(prefix, "register", {"email": "bus@example.COM", "password": "pw-2"})
        assert (code, again["code"]) == (3, "EMAIL_ALREADY_REGISTERED"), again
        headers = {"Authorization": "Bearer bus-token"}
        with httpx.Client(base_url=base, timeout=20, headers=headers) as client:
            r = client.get(f"/users/{reply['user_id']}", params={"min_version": reply["version"]})
            assert r.status_code == 200, r.text
            assert r.json()["email"] == "bus@example.com"  # the canonical form
            metrics = client.get("/metrics").text
        assert 'registry_commands_total{command="register",outcome="accepted",code=""} 1' in (
            metrics
        )
        assert (
            'registry_commands_total{command="register",outcome="rejected",'
            'code="EMAIL_ALREADY_REGISTERED"} 1'
        ) in metrics
        assert server.stop() == 0
        assert "Traceback" not in "".join(server.stderr), "".join(server.stderr)
    finally:
        asyncio.run(drop_streams(prefix))


def test_serve_reuses_its_token_and_honours_configured_tokens(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    (tmp_path / ".registry-token").write_text("kept-token-123\n")
    (tmp_path / ".registry-token").chmod(0o644)
    server = start("--port", str(free_port()))
    found = server.wait_for_line(r"API token: kept in (\S+)$")
    assert found.group(1) == str((tmp_path / ".registry-token").resolve())
    assert stat.S_IMODE((tmp_path / ".registry-token").stat().st_mode) == 0o600
    base = server.wait_for_line(r"listening on (http://\S+)").group(1)
    with httpx.Client(base_url=base, timeout=20) as client:  # the kept token is in use
        r = client.get("/users", headers={"Authorization": "Bearer kept-token-123"})
        assert r.status_code == 200, r.text
    assert server.stop() == 0
    # only a generated token is printed: a read one would land in every start's logs
    output = "".join(server.lines) + "".join(server.stderr)
    assert "kept-token-123" not in output, output

    port = free_port()
    server = start(REGISTRY_PORT=str(port), REGISTRY_API_TOKENS="configured-1,configured-2")
    server.wait_for_line("API token: from REGISTRY_API_TOKENS")
    base = server.wait_for_line(r"listening on (http://\S+)").group(1)
    with httpx.Client(base_url=base, timeout=20) as client:
        for token, status in (("configured-2", 200), ("kept-token-123", 401)):
            r = client.get("/users", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == status
    assert server.stop() == 0
    assert "Traceback" not in "".join(server.stderr)


def test_serve_reports_a_bad_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(REGISTRY), "serve"],
        cwd=tmp_path,
        env=clean_env(REGISTRY_DATABASE_URL="mysql://nope/db"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "registry: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_compose_runs_only_real_commands() -> None:
    """Every command docker-compose.yml runs is a `registry` command that exists."""

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "nats", "migrate", "serve", "consume"} <= set(services)
    assert sum(1 for s in services.values() if s.get("command") == ["worker"]) == 2
    runner = CliRunner()
    for name, service in services.items():
        if "build" not in service:
            continue
        command = service["command"]
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (name, command, result.output)
        env = service["environment"]
        assert env["REGISTRY_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert services["serve"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
