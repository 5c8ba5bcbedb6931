"""The web app: server-rendered pages for people, a JSON API (``/api``) for programs.

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
from typing import Literal

import markdown as md
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .agreement import compute_stats
from .auth import HashGate, LoginLimiter, check_login, new_secret, same
from .export import MODES, export_rows, to_jsonl
from .inputs import (API_ERRORS, AckIn, DemonstrationIn, GuidelinesIn, LabelIn, SkipIn, one_line,
                     refuse_unknown_query)
from .store import MARGINS, Late, Store, StoreError

HERE = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_session"
LOGIN_COOKIE = "rlhfkit_login_csrf"
STRENGTHS = {"slightly_better": "slightly better", "better": "better", "much_better": "much better"}
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"


def stats_payload(store: Store) -> dict:
    return {**compute_stats(store.label_rows()), "tasks": store.counts()}


def create_app(store: Store, login_limiter: LoginLimiter | None = None, hash_gate: HashGate | None = None) -> FastAPI:
    app = FastAPI(title="rlhfkit annotate", version=__version__, docs_url=None, redoc_url=None, responses=API_ERRORS,
                  description="Preference and demonstration collection. Every /api route needs "
                              "`Authorization: Bearer TOKEN` (`rlhfkit annotate add-user` prints one).")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store = store
    limiter = app.state.login_limiter = login_limiter if login_limiter is not None else LoginLimiter()
    gate = app.state.hash_gate = hash_gate if hash_gate is not None else HashGate()
    bearer = HTTPBearer(auto_error=False, description="the token `rlhfkit annotate add-user` printed")

    # ------------------------------------------------------------ cross-cutting

    app.add_middleware(Guard, store=store)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, e: StoreError):
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        errors = [{"loc": [str(x) for x in err.get("loc", ())], "msg": err.get("msg", "")} for err in e.errors()]
        return JSONResponse({"detail": one_line(e), "errors": errors}, status_code=422)

    def api_user(request: Request, _token=Security(bearer)):
        refuse_unknown_query(request)
        return request.state.user

    def api_admin(user=Depends(api_user)):
        if user.role != "admin":
            raise HTTPException(403, "this route needs the admin role")
        return user

    # ------------------------------------------------------------ JSON API

    @app.get("/api/me", tags=["api"])
    def me(user=Depends(api_user)):
        return {"id": user.id, "name": user.name, "role": user.role, "progress": store.progress(user.id)}

    @app.get("/api/next", tags=["api"], responses={204: {"description": "nothing left for the caller"}})
    def next_task(kind: Literal["pair", "demonstration"] | None = None, progress: bool = False,
                  user=Depends(api_user)):
        """The caller's next task, `{task_id, kind, prompt, a, b}` (pairs; `a` is shown on the left) or
        `{task_id, kind, prompt, draft}` (demonstrations), with `progress: {done, remaining}` when asked
        for; the same task again until it is answered or skipped. 204 when nothing is left for the caller."""
        task = store.next_task(user.id, kind, progress)
        return Response(status_code=204) if task is None else task

    @app.post("/api/labels", tags=["api"], status_code=201,
              responses={200: {"description": "already labelled: the stored label, unchanged"}})
    def post_label(body: LabelIn, response: Response, user=Depends(api_user)):
        """Label a pair assigned to the caller. 201 with the new label; 200 with the stored one when the
        caller already labelled this task (retries never add a second label)."""
        label, created = store.submit_label(user.id, body.task_id, body.choice, body.strength, body.comment)
        response.status_code = 201 if created else 200
        return label

    @app.post("/api/demonstrations", tags=["api"], status_code=201,
              responses={200: {"description": "already answered: the stored response, unchanged"}})
    def post_demonstration(body: DemonstrationIn, response: Response, user=Depends(api_user)):
        label, created = store.submit_demonstration(user.id, body.task_id, body.completion)
        response.status_code = 201 if created else 200
        return label

    @app.post("/api/skip", tags=["api"])
    def post_skip(body: SkipIn, user=Depends(api_user)):
        store.skip(user.id, body.task_id)
        return {"task_id": body.task_id, "status": "skipped"}

    @app.post("/api/undo", tags=["api"], responses={404: {"description": "nothing to undo"}})
    def post_undo(user=Depends(api_user)):
        """Delete the caller's latest answer; its task is served again by GET /api/next."""
        task_id = store.undo(user.id)
        if task_id is None:
            raise HTTPException(404, "nothing to undo")
        return {"task_id": task_id, "status": "reopened"}

    @app.get("/api/guidelines", tags=["api"])
    def get_guidelines(user=Depends(api_user)):
        text, version = store.guidelines()
        return {"markdown": text, "version": version}

    @app.put("/api/guidelines", tags=["api"])
    def put_guidelines(body: GuidelinesIn, user=Depends(api_admin)):
        return {"version": store.set_guidelines(body.markdown)}

    @app.get("/api/stats", tags=["api"])
    def get_stats(user=Depends(api_admin)):
        """Agreement (Krippendorff's alpha, Fleiss' kappa, Cohen's kappa per annotator pair), each
        annotator's agreement with the majority, gold accuracy and position bias, label counts, flags."""
        return stats_payload(store)

    @app.get("/api/export", tags=["api"], responses={200: {"content": {"application/x-ndjson": {}}}})
    def get_export(mode: Literal["majority", "per_annotator", "demonstrations"] = "majority",
                   include_gold: bool = False, user=Depends(api_admin)):
        """The labels as TRL-format JSONL (see `rlhfkit annotate export`)."""
        return download(store, mode, include_gold)

    # ------------------------------------------------------------ pages

    def page_user(request: Request):
        sid = request.cookies.get(SESSION_COOKIE)
        return store.session(sid) if sid else None

    def render(request: Request, name: str, status: int = 200, **ctx):
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def need_login(request: Request):
        found = page_user(request)
        if found is None:
            raise _Redirect("/login")
        return found

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, e: _Redirect):
        return RedirectResponse(e.to, status_code=303)

    @app.get("/", include_in_schema=False)
    def home(request: Request):
        user, _ = need_login(request)
        return RedirectResponse("/admin" if user.role == "admin" else "/annotate", status_code=303)

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_page(request: Request, error: str | None = None):
        return login_form(render, request, 401 if error else 200, error)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, name: str = Form(...), password: str = Form(...), csrf_token: str = Form("")):
        check_csrf(csrf_token, request.cookies.get(LOGIN_COOKIE))
        client = request.client.host if request.client else "?"
        user, refusal, wait = await check_login(store, limiter, gate, name.strip(), password, client)
        if refusal:  # refused before the password is even checked
            resp = login_form(render, request, 429, refusal)
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        if user is None:
            return RedirectResponse("/login?error=wrong+name+or+password", status_code=303)
        sid, _ = await run_in_threadpool(store.create_session, user.id)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax", secure=_https(request),
                        max_age=12 * 3600)
        resp.delete_cookie(LOGIN_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf_token: str = Form("")):
        user, csrf = need_login(request)
        check_csrf(csrf_token, csrf)
        store.end_session(request.cookies[SESSION_COOKIE])
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    @app.get("/guidelines", include_in_schema=False, response_class=HTMLResponse)
    def guidelines_page(request: Request, error: str | None = None):
        user, csrf = need_login(request)
        text, version = store.guidelines()
        html = md.markdown(text, extensions=["extra", "sane_lists"]) if text else ""
        return render(request, "guidelines.html", user=user, csrf=csrf, html=html, version=version,
                      first=user.guidelines_seen < version, error=error)

    @app.post("/guidelines/ack", include_in_schema=False)
    def guidelines_ack(request: Request, version: str = Form(""), csrf_token: str = Form("")):
        user, csrf = need_login(request)
        check_csrf(csrf_token, csrf)
        try:
            body = AckIn.model_validate({"version": version}, strict=False)
        except ValidationError as e:
            return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e))
        try:  # only the version on the page now; a stale or forged one goes back to the guidelines
            store.acknowledge_guidelines(user.id, body.version)
        except StoreError as e:
            return RedirectResponse(f"/guidelines?error={_q(str(e))}", status_code=303)
        return RedirectResponse("/annotate", status_code=303)

    @app.get("/annotate", include_in_schema=False, response_class=HTMLResponse)
    def annotate_page(request: Request, error: str | None = None, notice: str | None = None):
        user, csrf = need_login(request)
        _, version = store.guidelines()
        if user.guidelines_seen < version:  # before the first task, and again after each change
            return RedirectResponse("/guidelines", status_code=303)
        task = store.next_task(user.id)
        progress = task["progress"] if task else store.progress(user.id)
        template = "done.html" if task is None else f"{task['kind']}.html"
        return render(request, template, user=user, csrf=csrf, task=task, progress=progress, error=error,
                      notice=notice, strengths=STRENGTHS, chat=isinstance(task and task["prompt"], list))

    def form_answer(request: Request, csrf_token: str, model, data: dict, submit, typed: str = "",
                    ok: str | None = None, error: str | None = None):
        """A task form, validated by the API's own model. Refused input (422) and a late answer (409)
        get a page that keeps what was typed; other refusals go back to the task with a message."""
        user, csrf = need_login(request)
        check_csrf(csrf_token, csrf)
        if error:
            return RedirectResponse(f"/annotate?error={_q(error)}", status_code=303)
        try:
            submit(user, model.model_validate(data, strict=False))
        except ValidationError as e:
            return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e), typed=typed)
        except Late as e:
            return render(request, "refused.html", status=409, user=user, csrf=csrf, error=str(e), typed=typed)
        except StoreError as e:
            return RedirectResponse(f"/annotate?error={_q(str(e))}", status_code=303)
        return RedirectResponse("/annotate" + (f"?notice={_q(ok)}" if ok else ""), status_code=303)

    @app.post("/annotate/label", include_in_schema=False)
    def label_form(request: Request, task_id: str = Form(""), choice: str = Form(""), strength: str = Form(""),
                   comment: str = Form(""), csrf_token: str = Form("")):
        data = {"task_id": task_id, "choice": choice, "comment": comment.strip() or None,
                "strength": strength if strength in MARGINS and choice != "tie" else None}
        return form_answer(request, csrf_token, LabelIn, data, typed=comment,
                           submit=lambda u, b: store.submit_label(u.id, b.task_id, b.choice, b.strength, b.comment),
                           error=None if choice in ("a", "b", "tie") else "choose A, B or tie")

    @app.post("/annotate/demonstration", include_in_schema=False)
    def demonstration_form(request: Request, task_id: str = Form(""), completion: str = Form(""),
                           csrf_token: str = Form("")):
        return form_answer(request, csrf_token, DemonstrationIn, {"task_id": task_id, "completion": completion},
                           typed=completion, submit=lambda u, b: store.submit_demonstration(u.id, b.task_id,
                                                                                             b.completion))

    @app.post("/annotate/skip", include_in_schema=False)
    def skip_form(request: Request, task_id: str = Form(""), csrf_token: str = Form("")):
        return form_answer(request, csrf_token, SkipIn, {"task_id": task_id}, ok="skipped",
                           submit=lambda u, b: store.skip(u.id, b.task_id))

    @app.post("/annotate/undo", include_in_schema=False)
    def undo_form(request: Request, csrf_token: str = Form("")):
        user, csrf = need_login(request)
        check_csrf(csrf_token, csrf)
        task_id = store.undo(user.id)
        note = "undone: your last answer is open again" if task_id else "nothing to undo"
        return RedirectResponse(f"/annotate?notice={_q(note)}", status_code=303)

    def need_admin(request: Request):
        user, csrf = need_login(request)
        if user.role != "admin":
            raise HTTPException(403, "the dashboard is for admins")
        return user, csrf

    @app.get("/admin", include_in_schema=False, response_class=HTMLResponse)
    def admin_page(request: Request, notice: str | None = None):
        user, csrf = need_admin(request)
        text, version = store.guidelines()
        return render(request, "admin.html", user=user, csrf=csrf, stats=stats_payload(store), users=store.users(),
                      guidelines=text, version=version, notice=notice, modes=MODES)

    @app.post("/admin/guidelines", include_in_schema=False)
    def admin_guidelines(request: Request, markdown: str = Form(""), csrf_token: str = Form("")):
        user, csrf = need_admin(request)
        check_csrf(csrf_token, csrf)
        try:
            version = store.set_guidelines(GuidelinesIn.model_validate({"markdown": markdown}, strict=False).markdown)
        except ValidationError as e:
            return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e), typed=markdown)
        return RedirectResponse(f"/admin?notice={_q(f'guidelines saved (version {version})')}", status_code=303)

    @app.get("/admin/export", include_in_schema=False)
    def admin_export(request: Request, mode: str = Query("majority"), include_gold: bool = False):
        need_admin(request)
        if mode not in MODES:
            raise HTTPException(422, f"mode must be one of {', '.join(MODES)}")
        return download(store, mode, include_gold)

    return app


def check_csrf(token: str, csrf: str):
    if not same(token, csrf):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def login_form(render, request: Request, status: int, error: str | None) -> Response:
    """The login page with a fresh double-submit CSRF token (cookie and hidden field)."""
    token = new_secret()
    resp = render(request, "login.html", status=status, csrf=token, error=error, user=None)
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_https(request))
    return resp


def download(store: Store, mode: str, include_gold: bool) -> Response:
    rows, dropped = export_rows(store, mode, include_gold)
    return Response(to_jsonl(rows), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{mode}.jsonl"', "X-Rows": str(len(rows)),
        "X-Dropped": ",".join(f"{k}={v}" for k, v in sorted(dropped.items()))})


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


class _Redirect(Exception):
    def __init__(self, to: str):
        self.to = to


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])
