"""Read routes that survive a database blip: a route whose handling fails because the database
connection was lost runs once more (reads are safe to repeat); when the database stays down
the client gets 503 `DATABASE_UNAVAILABLE` (with `Retry-After`), not a 500."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from registry.api.errors import ApiProblem
from registry.service.retry import connection_lost, once_more

#: seconds a client is told to wait when the database stays unreachable
RETRY_AFTER = 1


class ReadRoute(APIRoute):
    """`APIRouter(route_class=ReadRoute)`: for routes that only read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        what = f"GET {self.path}"

        async def handle_once_more(request: Request) -> Response:
            try:
                return await once_more(lambda: handle(request), what=what)
            except Exception as exc:  # only a lost connection is answered here
                if not connection_lost(exc):
                    raise
                raise ApiProblem(
                    503,
                    "DATABASE_UNAVAILABLE",
                    "the database is unavailable; try again shortly",
                    headers={"Retry-After": str(RETRY_AFTER)},
                ) from None

        return handle_once_more
