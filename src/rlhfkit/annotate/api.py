"""The JSON API of the annotation server (``/api``): the caller's tasks, answers, guidelines, and
for admins statistics and export. Every route needs ``Authorization: Bearer TOKEN``, checked by the
app's middleware (``app.Guard``) before routing; the routes read the user it found."""

from __future__ import annotations

import math
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response, Security
from fastapi.security import HTTPBearer

from .agreement import compute_stats
from .export import export_rows, to_jsonl
from .db import Invalid, storable
from .inputs import API_ERRORS, DemonstrationIn, GuidelinesIn, LabelIn, SkipIn, Source, TasksIn, refuse_unknown_query
from .records import parse_pair
from .store import Store

router = APIRouter(tags=["api"], responses=API_ERRORS)
bearer = HTTPBearer(auto_error=False, description="the token `rlhfkit annotate add-user` printed")


def stats_payload(store: Store, source: str | None = None) -> dict:
    return {**compute_stats(store.label_rows(source)), "tasks": store.counts(source)}


def download(store: Store, mode: str, include_gold: bool, source: str | None = None) -> Response:
    rows, dropped = export_rows(store, mode, include_gold, source)
    return Response(to_jsonl(rows), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{mode}.jsonl"', "X-Rows": str(len(rows)),
        "X-Dropped": ",".join(f"{k}={v}" for k, v in sorted(dropped.items()))})


def store_of(request: Request) -> Store:
    return request.app.state.store


def api_user(request: Request, _token=Security(bearer)):
    refuse_unknown_query(request)
    return request.state.user


def api_admin(user=Depends(api_user)):
    if user.role != "admin":
        raise HTTPException(403, "this route needs the admin role")
    return user


@router.get("/api/me")
def me(user=Depends(api_user), store: Store = Depends(store_of)):
    return {"id": user.id, "name": user.name, "role": user.role, "progress": store.progress(user.id)}


@router.get("/api/next", responses={204: {"description": "nothing left for the caller"}})
def next_task(kind: Literal["pair", "demonstration"] | None = None, progress: bool = False,
              user=Depends(api_user), store: Store = Depends(store_of)):
    """The caller's next task, `{task_id, kind, prompt, a, b}` (pairs; `a` is shown on the left) or
    `{task_id, kind, prompt, draft}` (demonstrations), with `progress: {done, remaining}` when asked
    for; the same task again until it is answered or skipped. 204 when nothing is left for the caller."""
    task = store.next_task(user.id, kind, progress)
    return Response(status_code=204) if task is None else task


@router.post("/api/labels", status_code=201,
             responses={200: {"description": "already labelled: the stored label, unchanged"}})
def post_label(body: LabelIn, response: Response, user=Depends(api_user), store: Store = Depends(store_of)):
    """Label a pair assigned to the caller. 201 with the new label; 200 with the stored one when the
    caller already labelled this task (retries never add a second label)."""
    label, created = store.submit_label(user.id, body.task_id, body.choice, body.strength, body.comment)
    response.status_code = 201 if created else 200
    return label


@router.post("/api/demonstrations", status_code=201,
             responses={200: {"description": "already answered: the stored response, unchanged"}})
def post_demonstration(body: DemonstrationIn, response: Response, user=Depends(api_user),
                       store: Store = Depends(store_of)):
    label, created = store.submit_demonstration(user.id, body.task_id, body.completion)
    response.status_code = 201 if created else 200
    return label


@router.post("/api/skip")
def post_skip(body: SkipIn, user=Depends(api_user), store: Store = Depends(store_of)):
    store.skip(user.id, body.task_id)
    return {"task_id": body.task_id, "status": "skipped"}


@router.post("/api/undo", responses={404: {"description": "nothing to undo"}})
def post_undo(user=Depends(api_user), store: Store = Depends(store_of)):
    """Delete the caller's latest answer; its task is served again by GET /api/next."""
    task_id = store.undo(user.id)
    if task_id is None:
        raise HTTPException(404, "nothing to undo")
    return {"task_id": task_id, "status": "reopened"}


@router.get("/api/guidelines")
def get_guidelines(user=Depends(api_user), store: Store = Depends(store_of)):
    text, version = store.guidelines()
    return {"markdown": text, "version": version}


@router.put("/api/guidelines")
def put_guidelines(body: GuidelinesIn, user=Depends(api_admin), store: Store = Depends(store_of)):
    return {"version": store.set_guidelines(body.markdown)}


@router.get("/api/stats")
def get_stats(source: Source = None, user=Depends(api_admin), store: Store = Depends(store_of)):
    """Agreement (Krippendorff's alpha, Fleiss' kappa, Cohen's kappa per annotator pair), each
    annotator's agreement with the majority, gold accuracy and position bias, label counts, flags;
    `tasks.labels_missing`: labels still wanted (K per pair)."""
    return stats_payload(store, source)


@router.get("/api/export", responses={200: {"content": {"application/x-ndjson": {}}}})
def get_export(mode: Literal["majority", "per_annotator", "demonstrations"] = "majority",
               include_gold: bool = False, source: Source = None, user=Depends(api_admin),
               store: Store = Depends(store_of)):
    """The labels as TRL-format JSONL (see `rlhfkit annotate export`)."""
    return download(store, mode, include_gold, source)


def _storable_json(value, depth: int = 0) -> bool:
    """Whether both databases store ``value`` in a JSON column (no NUL, no lone surrogate, no NaN)."""
    if depth > 20:
        return False
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(storable(k) and _storable_json(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable_json(v, depth + 1) for v in value)
    return True


@router.post("/api/tasks", status_code=201)
def post_tasks(body: TasksIn, user=Depends(api_admin), store: Store = Depends(store_of)):
    """Add pairs to the queue under the batch name `source`, all or none (`rlhfkit annotate import`
    over HTTP). A pair whose id is already there with the same content is counted `unchanged`, so a
    client may push the same batch again after a restart; the same id with other content is a 409."""
    from ..data.errors import DataError
    from ..data.load import Location

    try:
        records = [parse_pair(r, Location("records", i, "record"), i, body.source) for i, r in enumerate(body.records, 1)]
    except DataError as e:
        raise Invalid(str(e)) from None
    if not all(_storable_json(r) for r in body.records):
        raise Invalid("records: text must not contain NUL characters or unpaired surrogates, numbers must be "
                      "finite, nesting at most 20 deep")
    if len({r.external_id for r in records}) < len(records):
        raise Invalid("records: two records share an id")
    report = store.import_tasks(records, overlap=body.overlap, gold_rate=body.gold_rate, source=body.source)
    return {"added": report.added, "unchanged": report.unchanged, "gold": report.gold}
