"""The read API application: `create_app(container)`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import Depends, FastAPI

from projections.queries import ReadModel
from registry.api import errors
from registry.api.auth import BearerAuth
from registry.api.monitoring import ops_router
from registry.api.users import users_router
from registry.bootstrap import Container
from registry.console import install as install_console

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """\
Read API of the event-sourced user registry.

Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <token>` (a token from
`REGISTRY_API_TOKENS`, or the one `registry serve` generated). Errors are JSON objects with a
stable `code` and a `message`. No response ever carries a password hash or an OAuth token.
"""


@asynccontextmanager
async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield


def create_app(container: Container, *, lifespan: Lifespan | None = None) -> FastAPI:
    """The read API over `container`'s database. `lifespan` runs background work (the
    in-process projector, the bus consumer) for as long as the app serves; `registry serve`
    passes one, tests usually do not."""
    app = FastAPI(
        title="User registry",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan or _no_lifespan,
    )
    app.state.container = container
    errors.install(app)
    auth = Depends(BearerAuth(container.settings.api_tokens))
    read_model = ReadModel(container.user_table, container.oauth_table)
    app.include_router(users_router(container, read_model), dependencies=[auth])
    app.include_router(ops_router(container, auth))
    install_console(app, container, read_model)
    return app
