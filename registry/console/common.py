"""What every console route shares: the templates, the session check, the CSRF check, and
the two ways a request is turned away (to the sign-in page, or refused with a message)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from projections.queries import ReadModel
from registry.bootstrap import Container
from registry.console.headers import PREFIX
from registry.console.sessions import COOKIE, Session, Sessions

HERE = Path(__file__).parent
SIGN_IN = f"{PREFIX}/sign-in"


class SignInRequired(Exception):
    """No live session: the request goes to the sign-in page, then back to `path`."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class Refused(Exception):
    """The request is answered with a page saying why, and nothing is changed."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def when(value: datetime | None) -> str:
    """An instant as operators read it: UTC, to the millisecond."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def link(path: str, **params: object) -> str:
    """`path` with a query string of the params that are not None."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if not path or "\\" in path or "//" in path or not path.startswith(PREFIX):
        return PREFIX
    return path


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped; nothing is marked safe
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.globals["link"] = link
    return Jinja2Templates(env=env)


@dataclass
class Console:
    container: Container
    read_model: ReadModel
    sessions: Sessions = field(default_factory=Sessions)
    templates: Jinja2Templates = field(default_factory=_templates)

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t for t in self.container.settings.api_tokens if t)

    def page(
        self,
        request: Request,
        name: str,
        *,
        status: int = 200,
        session: Session | None = None,
        **context: object,
    ) -> HTMLResponse:
        context.update(session=session, csrf=session.csrf if session else "", prefix=PREFIX)
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    async def signed_in(self, request: Request) -> Session:
        """A dependency: the request's live session; else off to the sign-in page."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInRequired(path)
        return session

    async def checked(self, request: Request) -> Session:
        """A dependency for routes that change something: a live session and its CSRF
        token in the form (`csrf`) or the `X-CSRF-Token` header; 403 otherwise."""
        session = await self.signed_in(request)
        given = request.headers.get("x-csrf-token")
        if given is None:
            form = await request.form()
            value = form.get("csrf")
            given = value if isinstance(value, str) else None
        if not session.csrf_matches(given):
            raise Refused(
                403,
                "Refused: missing or wrong CSRF token",
                "This action needs the CSRF token of your session; nothing was changed. "
                "Reload the page and try again.",
            )
        return session

    async def on_sign_in_required(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        target = f"{SIGN_IN}?next={quote(safe_next(exc.path), safe='')}"
        return RedirectResponse(target, status_code=303)

    async def on_refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        session = self.sessions.get(request.cookies.get(COOKIE))
        return self.page(
            request,
            "message.html",
            status=exc.status,
            session=session,
            title=exc.title,
            message=exc.message,
        )
