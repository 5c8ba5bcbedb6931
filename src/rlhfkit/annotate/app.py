"""The web app: server-rendered pages for people (``pages``, ``admin``), a JSON API (``/api``,
``api``) for programs, each an APIRouter; this module puts them together with the middleware.

Pages use a browser session (cookie, argon2-checked password) and a CSRF token in every form
post; the API uses ``Authorization: Bearer TOKEN`` on every ``/api`` route, checked by a
middleware before routing, so even a malformed request without a token gets 401 (not 422).
Annotators see only the tasks assigned to them; admins see the dashboard and export.

Everything the pages load is served from ``static/`` (Content-Security-Policy ``default-src
'self'``): no CDN, no inline script. Guidelines are markdown written by an admin (trusted) and
rendered with Python-Markdown.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from . import admin, api, pages
from .auth import HashGate, LoginLimiter
from .db import StoreError
from .inputs import API_ERRORS, one_line
from .pages import Redirect
from .store import Store

HERE = Path(__file__).parent
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"


def create_app(store: Store, login_limiter: LoginLimiter | None = None, hash_gate: HashGate | None = None) -> FastAPI:
    app = FastAPI(title="rlhfkit annotate", version=__version__, docs_url=None, redoc_url=None, responses=API_ERRORS,
                  description="Preference and demonstration collection. Every /api route needs "
                              "`Authorization: Bearer TOKEN` (`rlhfkit annotate add-user` prints one).")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store = store
    app.state.login_limiter = login_limiter if login_limiter is not None else LoginLimiter()
    app.state.hash_gate = hash_gate if hash_gate is not None else HashGate()
    app.add_middleware(Guard, store=store)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(Redirect, redirect)
    for router in (api.router, pages.router, admin.router):
        # the routes themselves rather than include_router (FastAPI >= 0.16x adds a router lazily):
        # app.routes lists every route, and the authorization matrix test walks it
        app.router.routes.extend(router.routes)
    return app


async def store_error(request: Request, e: StoreError):
    return JSONResponse({"detail": str(e)}, status_code=e.status)


async def bad_request(request: Request, e: RequestValidationError):
    errors = [{"loc": [str(x) for x in err.get("loc", ())], "msg": err.get("msg", "")} for err in e.errors()]
    return JSONResponse({"detail": one_line(e), "errors": errors}, status_code=422)


async def redirect(request: Request, e: Redirect):
    return RedirectResponse(e.to, status_code=303)


SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]


class Guard:
    """ASGI middleware: bearer-token check for every ``/api`` route (before routing and body parsing,
    so a request without a token always gets 401) and security headers on every response.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper streams every response through
    an extra task and queue, a measurable cost at hundreds of requests per second."""

    def __init__(self, app, store: Store):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/api" or path.startswith("/api/"):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
            kind, _, token = header.partition(" ")
            token = token.strip()
            if kind.lower() != "bearer" or not token:
                return await _unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN'")(
                    scope, receive, send)
            user = await run_in_threadpool(self.store.user_by_token, token)
            if user is None:
                return await _unauthorized("invalid token")(scope, receive, send)
            scope.setdefault("state", {})["user"] = user  # read back as request.state.user

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
