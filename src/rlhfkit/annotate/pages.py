"""The annotation server's pages for people: login and logout, the guidelines, and the task forms.

A browser session (cookie, argon2-checked password) and a CSRF token in every form post. Forms are
validated by the API's own request models (``inputs``). Guidelines are markdown written by an admin
(trusted) and rendered with Python-Markdown.
"""

from __future__ import annotations

from pathlib import Path

import markdown as md
from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .api import store_of
from .auth import check_login, new_secret, same
from .db import Late, StoreError
from .inputs import API_ERRORS, AckIn, DemonstrationIn, LabelIn, SkipIn, one_line
from .store import MARGINS

HERE = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_session"
LOGIN_COOKIE = "rlhfkit_login_csrf"
STRENGTHS = {"slightly_better": "slightly better", "better": "better", "much_better": "much better"}

router = APIRouter(include_in_schema=False, responses=API_ERRORS)
templates = Jinja2Templates(directory=str(HERE / "templates"))


class Redirect(Exception):
    """Raised by ``need_login``; the app answers it with a 303 to ``to``."""

    def __init__(self, to: str):
        self.to = to


def page_user(request: Request):
    sid = request.cookies.get(SESSION_COOKIE)
    return store_of(request).session(sid) if sid else None


def render(request: Request, name: str, status: int = 200, **ctx):
    return templates.TemplateResponse(request, name, ctx, status_code=status)


def need_login(request: Request):
    found = page_user(request)
    if found is None:
        raise Redirect("/login")
    return found


def check_csrf(token: str, csrf: str):
    if not same(token, csrf):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def login_form(render, request: Request, status: int, error: str | None) -> Response:
    """The login page with a fresh double-submit CSRF token (cookie and hidden field)."""
    token = new_secret()
    resp = render(request, "login.html", status=status, csrf=token, error=error, user=None)
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=https(request))
    return resp


def https(request: Request) -> bool:
    return request.url.scheme == "https"


def quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])

@router.get("/", include_in_schema=False)
def home(request: Request):
    user, _ = need_login(request)
    return RedirectResponse("/admin" if user.role == "admin" else "/annotate", status_code=303)


@router.get("/login", include_in_schema=False, response_class=HTMLResponse)
def login_page(request: Request, error: str | None = None):
    return login_form(render, request, 401 if error else 200, error)


@router.post("/login", include_in_schema=False)
async def login(request: Request, name: str = Form(...), password: str = Form(...), csrf_token: str = Form("")):
    check_csrf(csrf_token, request.cookies.get(LOGIN_COOKIE))
    client = request.client.host if request.client else "?"
    state = request.app.state
    user, refusal, wait = await check_login(state.store, state.login_limiter, state.hash_gate, name.strip(), password,
                                            client)
    if refusal:  # refused before the password is even checked
        resp = login_form(render, request, 429, refusal)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    if user is None:
        return RedirectResponse("/login?error=wrong+name+or+password", status_code=303)
    sid, _ = await run_in_threadpool(store_of(request).create_session, user.id)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax", secure=https(request),
                    max_age=12 * 3600)
    resp.delete_cookie(LOGIN_COOKIE)
    return resp


@router.post("/logout", include_in_schema=False)
def logout(request: Request, csrf_token: str = Form("")):
    user, csrf = need_login(request)
    check_csrf(csrf_token, csrf)
    store_of(request).end_session(request.cookies[SESSION_COOKIE])
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


@router.get("/guidelines", include_in_schema=False, response_class=HTMLResponse)
def guidelines_page(request: Request, error: str | None = None):
    user, csrf = need_login(request)
    text, version = store_of(request).guidelines()
    html = md.markdown(text, extensions=["extra", "sane_lists"]) if text else ""
    return render(request, "guidelines.html", user=user, csrf=csrf, html=html, version=version,
                  first=user.guidelines_seen < version, error=error)


@router.post("/guidelines/ack", include_in_schema=False)
def guidelines_ack(request: Request, version: str = Form(""), csrf_token: str = Form("")):
    user, csrf = need_login(request)
    check_csrf(csrf_token, csrf)
    try:
        body = AckIn.model_validate({"version": version}, strict=False)
    except ValidationError as e:
        return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e))
    try:  # only the version on the page now; a stale or forged one goes back to the guidelines
        store_of(request).acknowledge_guidelines(user.id, body.version)
    except StoreError as e:
        return RedirectResponse(f"/guidelines?error={quoted(str(e))}", status_code=303)
    return RedirectResponse("/annotate", status_code=303)


@router.get("/annotate", include_in_schema=False, response_class=HTMLResponse)
def annotate_page(request: Request, error: str | None = None, notice: str | None = None):
    user, csrf = need_login(request)
    store = store_of(request)
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
        return RedirectResponse(f"/annotate?error={quoted(error)}", status_code=303)
    try:
        submit(user, model.model_validate(data, strict=False))
    except ValidationError as e:
        return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e), typed=typed)
    except Late as e:
        return render(request, "refused.html", status=409, user=user, csrf=csrf, error=str(e), typed=typed)
    except StoreError as e:
        return RedirectResponse(f"/annotate?error={quoted(str(e))}", status_code=303)
    return RedirectResponse("/annotate" + (f"?notice={quoted(ok)}" if ok else ""), status_code=303)


@router.post("/annotate/label", include_in_schema=False)
def label_form(request: Request, task_id: str = Form(""), choice: str = Form(""), strength: str = Form(""),
               comment: str = Form(""), csrf_token: str = Form("")):
    data = {"task_id": task_id, "choice": choice, "comment": comment.strip() or None,
            "strength": strength if strength in MARGINS and choice != "tie" else None}
    store = store_of(request)
    return form_answer(request, csrf_token, LabelIn, data, typed=comment,
                       submit=lambda u, b: store.submit_label(u.id, b.task_id, b.choice, b.strength, b.comment),
                       error=None if choice in ("a", "b", "tie") else "choose A, B or tie")


@router.post("/annotate/demonstration", include_in_schema=False)
def demonstration_form(request: Request, task_id: str = Form(""), completion: str = Form(""),
                       csrf_token: str = Form("")):
    store = store_of(request)
    return form_answer(request, csrf_token, DemonstrationIn, {"task_id": task_id, "completion": completion},
                       typed=completion, submit=lambda u, b: store.submit_demonstration(u.id, b.task_id, b.completion))


@router.post("/annotate/skip", include_in_schema=False)
def skip_form(request: Request, task_id: str = Form(""), csrf_token: str = Form("")):
    return form_answer(request, csrf_token, SkipIn, {"task_id": task_id}, ok="skipped",
                       submit=lambda u, b: store_of(request).skip(u.id, b.task_id))


@router.post("/annotate/undo", include_in_schema=False)
def undo_form(request: Request, csrf_token: str = Form("")):
    user, csrf = need_login(request)
    check_csrf(csrf_token, csrf)
    task_id = store_of(request).undo(user.id)
    note = "undone: your last answer is open again" if task_id else "nothing to undo"
    return RedirectResponse(f"/annotate?notice={quoted(note)}", status_code=303)
