"""The admin dashboard of the annotation server: statistics, users, guidelines, export."""

from __future__ import annotations

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from .api import download, stats_payload, store_of
from .export import MODES
from .inputs import API_ERRORS, GuidelinesIn, one_line
from .pages import check_csrf, need_login, quoted, render

router = APIRouter(include_in_schema=False, responses=API_ERRORS)

def need_admin(request: Request):
    user, csrf = need_login(request)
    if user.role != "admin":
        raise HTTPException(403, "the dashboard is for admins")
    return user, csrf


@router.get("/admin", include_in_schema=False, response_class=HTMLResponse)
def admin_page(request: Request, notice: str | None = None):
    user, csrf = need_admin(request)
    store = store_of(request)
    text, version = store.guidelines()
    return render(request, "admin.html", user=user, csrf=csrf, stats=stats_payload(store), users=store.users(),
                  guidelines=text, version=version, notice=notice, modes=MODES)


@router.post("/admin/guidelines", include_in_schema=False)
def admin_guidelines(request: Request, markdown: str = Form(""), csrf_token: str = Form("")):
    user, csrf = need_admin(request)
    check_csrf(csrf_token, csrf)
    try:
        markdown = GuidelinesIn.model_validate({"markdown": markdown}, strict=False).markdown
        version = store_of(request).set_guidelines(markdown)
    except ValidationError as e:
        return render(request, "refused.html", status=422, user=user, csrf=csrf, error=one_line(e), typed=markdown)
    return RedirectResponse(f"/admin?notice={quoted(f'guidelines saved (version {version})')}", status_code=303)


@router.get("/admin/export", include_in_schema=False)
def admin_export(request: Request, mode: str = Query("majority"), include_gold: bool = False):
    need_admin(request)
    if mode not in MODES:
        raise HTTPException(422, f"mode must be one of {', '.join(MODES)}")
    return download(store_of(request), mode, include_gold)
