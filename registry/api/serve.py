"""`registry serve`: migrate, then serve the read API with an in-process projector and, when a
broker is configured, the bus command consumer. SIGTERM or Ctrl+C shuts down cleanly: the
consumer stops, the projector commits its checkpoint, the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from registry.adapter.projector import projecting
from registry.api.app import Lifespan, create_app
from registry.api.auth import load_or_create_token
from registry.api.metrics import counting
from registry.bootstrap import Container, build
from registry.bus.app import running_bus
from registry.logs import configure_logging
from registry.schema import migrate
from registry.settings import Settings

Echo = Callable[[str], None]


@asynccontextmanager
async def consuming(container: Container) -> AsyncIterator[None]:
    """The bus command consumer and event relay (`registry.bus.app.running_bus`), each command's
    outcome counted for `/metrics`."""
    handlers = container.handlers()
    handle = counting(lambda command: str(command.name), handlers.handle)
    async with running_bus(container, handle=handle):
        yield


def background(container: Container) -> Lifespan:
    """The app's lifespan: the in-process projector, then the bus consumer (stopped first)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(projecting(container))
            if container.settings.broker_url:
                await stack.enter_async_context(consuming(container))
            yield

    return lifespan


def with_token(settings: Settings, echo: Echo) -> Settings:
    """Settings with an API token: the configured ones, or one kept in `token_file` (0600)."""
    if settings.api_tokens:
        echo("API token: from REGISTRY_API_TOKENS")
        return settings
    token, created = load_or_create_token(settings.token_file)
    where = settings.token_file.resolve()
    if created:  # shown once, when there is no other way to learn it
        echo(f"API token (generated, kept in {where}): {token}")
    else:  # never again: start-up output ends up in container logs
        echo(f"API token: kept in {where}")
    return settings.model_copy(update={"api_tokens": [token]})


@dataclass
class _Stop:
    requested: bool = False
    server: uvicorn.Server | None = None
    container: Container | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.container is not None:
            self.container.stopping = True
        if self.server is not None:
            self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, telling the container when a signal starts the shutdown (uvicorn
    handles SIGTERM/SIGINT itself while serving, through `handle_exit`)."""

    def __init__(self, config: uvicorn.Config, container: Container) -> None:
        super().__init__(config)
        self.container = container

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.container.stopping = True
        super().handle_exit(sig, frame)


async def _announce(server: uvicorn.Server, settings: Settings, echo: Echo) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn only offers this flag
        await asyncio.sleep(0.02)
    host, port = settings.host, settings.port
    for srv in server.servers:
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            break
    base = f"http://{host}:{port}"
    db = make_url(settings.database_url).render_as_string(hide_password=True)
    echo(f"database: {db}; bus: {settings.broker_url or 'off (REGISTRY_BROKER_URL unset)'}")
    echo(f"API docs: {base}/docs")
    echo(f"listening on {base}")


async def serve(settings: Settings, stop: _Stop, echo: Echo) -> int:
    container = build(settings)
    try:
        container.settings = settings = with_token(settings, echo)
        await container.start()  # a wrong or missing master key: nothing written
        await migrate(container.engine)
        if stop.requested:
            return 0
        app = create_app(container, lifespan=background(container))
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        server = _Server(config, container)
        stop.server, stop.container = server, container
        if stop.requested:
            return 0
        announcer = asyncio.create_task(_announce(server, settings, echo))
        try:
            await server.serve()
        finally:
            announcer.cancel()
        if not server.started and not stop.requested:
            print("registry: error: the server did not start (see the log above)", file=sys.stderr)
            return 1
        return 0
    finally:
        await container.aclose()


def run_server(settings: Settings, echo: Echo) -> int:
    """Run `registry serve` in this (main) thread; the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    stop = _Stop()
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in
    # place that ends here, so SIGTERM is a clean exit 0 instead of a kill
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return asyncio.run(serve(settings, stop, echo))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def echo_stdout(line: str) -> None:
    print(f"registry: {line}", flush=True)
    sys.stdout.flush()
