"""FastAPI Users' documented SQLAlchemy example (examples/sqlalchemy_app) run as a user runs it:
`uvicorn app.app:app`, over HTTP, started twice on the same database.

The example is upstream's "Full example - SQLAlchemy" layout (`create_db_and_tables()` with
`Base.metadata.create_all` at start-up), changed only by the imports and the lifespan's
`async with run_projector(engine, User):`. Register, log in with a JWT, read and PATCH
`/users/me` (visible in the very next request), a duplicate email in another letter case is
refused; then a second start on the same database, from another working directory: the user
logs in again and can still change their data.

On SQLite nothing is configured (the embedded default): the master key must be kept with the
database, not in whichever directory the app was started from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import TEST_MASTER_KEY
from tests.support.processes import Server, clean_env, free_port

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app"
START_TIMEOUT = 60.0
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"


class Example:
    """One `uvicorn app.app:app` process of the example."""

    def __init__(self, cwd: Path, database_url: str) -> None:
        cwd.mkdir(exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = clean_env(DATABASE_URL=database_url)
        if make_url(database_url).get_backend_name() == "postgresql":
            env["REGISTRY_MASTER_KEY"] = TEST_MASTER_KEY  # a deployment's configured key
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.app:app",
                "--app-dir",
                str(EXAMPLE),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.server = Server(proc)

    def output(self) -> str:
        return "".join(self.server.lines + self.server.stderr)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base}/docs", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the example did not start:\n{self.output()}")

    def stop(self) -> None:
        code = self.server.stop()
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
        assert code in (0, -signal.SIGTERM), self.output()
        assert "Application shutdown complete." in self.output(), self.output()

    def kill(self) -> None:
        if self.server.proc.poll() is None:
            self.server.proc.kill()
            self.server.proc.wait(10)


@pytest.fixture
def start(database_url: str) -> Iterator[Callable[[Path], Example]]:
    started: list[Example] = []

    def run(cwd: Path) -> Example:
        example = Example(cwd, database_url)
        started.append(example)
        example.wait_ready()
        return example

    yield run
    for example in started:
        example.kill()


def register(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/auth/register", json={"email": email, "password": password})


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/auth/jwt/login", data={"username": email, "password": password})


def bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_the_documented_example_serves_and_restarts(
    start: Callable[[Path], Example], database_url: str, tmp_path: Path
) -> None:
    first = start(tmp_path / "first")
    with httpx.Client(base_url=first.base, timeout=30) as client:
        alice = register(client, "alice@example.com")
        assert alice.status_code == 201, alice.text
        user_id = alice.json()["id"]
        taken = register(client, "ALICE@Example.com")
        assert taken.status_code == 400, taken.text
        assert taken.json()["detail"] == "REGISTER_USER_ALREADY_EXISTS"

        auth = bearer(login(client, "Alice@example.com"))  # typed in another case
        me = client.get("/users/me", headers=auth)
        assert me.status_code == 200, me.text
        assert (me.json()["id"], me.json()["email"]) == (user_id, "alice@example.com")

        patched = client.patch(
            "/users/me",
            json={"email": "alice.new@example.com", "password": NEW_PASSWORD},
            headers=auth,
        )
        assert patched.status_code == 200, patched.text
        assert client.get("/users/me", headers=auth).json()["email"] == "alice.new@example.com"
        assert login(client, "alice.new@example.com").status_code == 400  # the old password
        bearer(login(client, "alice.new@example.com", NEW_PASSWORD))
    first.stop()

    second = start(tmp_path / "second")
    with httpx.Client(base_url=second.base, timeout=30) as client:
        auth = bearer(login(client, "ALICE.NEW@example.com", NEW_PASSWORD))
        me = client.get("/users/me", headers=auth).json()
        assert (me["id"], me["email"]) == (user_id, "alice.new@example.com")
        taken = register(client, "Alice.New@Example.com")
        assert taken.status_code == 400
        assert taken.json()["detail"] == "REGISTER_USER_ALREADY_EXISTS"
        assert register(client, "alice@example.com").status_code == 201  # freed by the change

        patched = client.patch("/users/me", json={"email": "alice.third@example.com"}, headers=auth)
        assert patched.status_code == 200, patched.text
        assert client.get("/users/me", headers=auth).json()["email"] == "alice.third@example.com"
    second.stop()

    if make_url(database_url).get_backend_name() == "sqlite":
        for cwd in ("first", "second"):  # nothing of the registry's where the app was started
            assert sorted(os.listdir(tmp_path / cwd)) == [], cwd
