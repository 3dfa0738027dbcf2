"""The operator console at `/console`: server-rendered pages over the registry's own reads.

`install(app, container, read_model)` mounts it on the read API (`registry serve`). It is
signed in to with the API's bearer tokens and answers nothing without a session; the JSON API
is unchanged.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from projections.queries import ReadModel
from registry.bootstrap import Container
from registry.console.access import access_router
from registry.console.common import HERE, Console, Refused, SignInRequired
from registry.console.headers import STATIC, ConsoleHeaders
from registry.console.projections import projections_router
from registry.console.tail import tail_router
from registry.console.users import users_router

__all__ = ["install"]


def install(app: FastAPI, container: Container, read_model: ReadModel) -> Console:
    """Serve the console from `app`; returns its state (sessions, templates)."""
    console = Console(container, read_model)
    app.add_exception_handler(SignInRequired, console.on_sign_in_required)
    app.add_exception_handler(Refused, console.on_refused)
    app.add_middleware(ConsoleHeaders)
    for router in (access_router, projections_router, tail_router, users_router):
        app.include_router(router(console))
    app.mount(STATIC.rstrip("/"), StaticFiles(directory=HERE / "static"), name="console-static")
    return console
