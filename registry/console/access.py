"""Signing in and out: the API's bearer token, typed once, exchanged for a session cookie."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from registry.api.auth import token_matches
from registry.console.common import SIGN_IN, Console, safe_next
from registry.console.headers import PREFIX
from registry.console.sessions import COOKIE, Session


def access_router(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(SIGN_IN)
    async def sign_in_form(request: Request, next: str | None = None) -> Response:
        return console.page(request, "sign_in.html", next=safe_next(next), error=None)

    @router.post(SIGN_IN)
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        token, target = form.get("token"), form.get("next")
        target = safe_next(target if isinstance(target, str) else None)
        if not isinstance(token, str) or not token_matches(token.strip(), console.tokens):
            return console.page(
                request,
                "sign_in.html",
                status=401,
                next=target,
                error="That token is not accepted. Use a token from REGISTRY_API_TOKENS "
                "(or the one `registry serve` generated).",
            )
        session_id, _ = console.sessions.open(token.strip())
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(console.sessions.lifetime),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post(f"{PREFIX}/sign-out")
    async def sign_out(request: Request, _: Session = Depends(console.checked)) -> Response:
        console.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse(SIGN_IN, status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    @router.get(PREFIX)
    async def home(_: Session = Depends(console.signed_in)) -> Response:
        return RedirectResponse(f"{PREFIX}/projections", status_code=303)

    return router
