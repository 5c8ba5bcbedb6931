"""Issue #19, point 6: an overlap-K task never ends with more than K labels.

An answer that arrived after its assignment expired (open longer than ASSIGNMENT_TTL) and after the
task had been handed to someone else used to be stored anyway: K+1 labels. Now a late answer is
stored only when a slot is still free (taken atomically, as GET /api/next does); otherwise it is
refused with 409, and the page shows what the annotator typed so nothing is lost.
"""

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import rlhfkit.annotate.store as store_module
from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.schema import labels, tasks
from rlhfkit.annotate.store import Store

PW = "secret-pw"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    url = str(tmp_path / "late.db") if request.param == "sqlite" else request.getfixturevalue("annotate_pg")()
    s = Store(url)
    yield s
    s.close()


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _over_k(store):
    with store.read() as conn:
        per_task = select(labels.c.task_id, func.count().label("n")).group_by(labels.c.task_id).subquery()
        return conn.execute(select(tasks.c.external_id, per_task.c.n, tasks.c.overlap, tasks.c.assigned)
                            .join(per_task, per_task.c.task_id == tasks.c.id)
                            .where((per_task.c.n > tasks.c.overlap) | (tasks.c.assigned > tasks.c.overlap))).all()


def _expire_open_assignments(client, token, monkeypatch):
    """Make every open assignment too old, and let ``token``'s GET /api/next reclaim them."""
    monkeypatch.setattr(store_module, "ASSIGNMENT_TTL", timedelta(seconds=-1))
    r = client.get("/api/next", headers=_bearer(token))
    monkeypatch.undo()
    return r


def test_a_late_answer_after_the_task_was_reassigned_is_refused_and_k_holds(store, monkeypatch):
    store.import_tasks([TaskRecord("p0", "pair", "prompt", "good", "bad")], overlap=1, gold_rate=0.0)
    alice, bob = (store.add_user(n, "annotator", PW)[1] for n in ("alice", "bob"))
    client = TestClient(create_app(store))
    task = client.get("/api/next", headers=_bearer(alice)).json()["task_id"]
    assert _expire_open_assignments(client, bob, monkeypatch).json()["task_id"] == task  # bob holds K=1's slot
    assert client.post("/api/labels", json={"task_id": task, "choice": "a"}, headers=_bearer(bob)).status_code == 201
    r = client.post("/api/labels", json={"task_id": task, "choice": "b"}, headers=_bearer(alice))
    assert r.status_code == 409 and "expired" in r.json()["detail"], r.text
    assert len(store.label_rows()) == 1 and _over_k(store) == []


def test_a_late_answer_before_the_new_holder_answers_is_refused_too(store, monkeypatch):
    store.import_tasks([TaskRecord("p0", "pair", "prompt", "good", "bad")], overlap=1, gold_rate=0.0)
    alice, bob = (store.add_user(n, "annotator", PW)[1] for n in ("alice", "bob"))
    client = TestClient(create_app(store))
    task = client.get("/api/next", headers=_bearer(alice)).json()["task_id"]
    _expire_open_assignments(client, bob, monkeypatch)
    assert client.post("/api/labels", json={"task_id": task, "choice": "b"},
                       headers=_bearer(alice)).status_code == 409
    assert client.post("/api/labels", json={"task_id": task, "choice": "a"}, headers=_bearer(bob)).status_code == 201
    assert len(store.label_rows()) == 1 and _over_k(store) == []


def test_a_late_answer_whose_slot_is_still_free_is_kept(store, monkeypatch):
    store.import_tasks([TaskRecord("p0", "pair", "prompt", "good", "bad")], overlap=1, gold_rate=0.0)
    alice, bob = (store.add_user(n, "annotator", PW)[1] for n in ("alice", "bob"))
    client = TestClient(create_app(store))
    task = client.get("/api/next", headers=_bearer(alice)).json()["task_id"]
    monkeypatch.setattr(store_module, "ASSIGNMENT_TTL", timedelta(seconds=-1))
    assert client.get("/api/next", headers=_bearer(bob)).json()["task_id"] == task  # reclaimed ...
    assert client.post("/api/skip", json={"task_id": task}, headers=_bearer(bob)).status_code == 200  # ... freed
    monkeypatch.undo()
    assert client.post("/api/labels", json={"task_id": task, "choice": "a"},
                       headers=_bearer(alice)).status_code == 201
    assert len(store.label_rows()) == 1 and _over_k(store) == []


def test_a_late_form_answer_is_refused_and_the_typed_text_stays_in_the_page(store, monkeypatch):
    store.import_tasks([TaskRecord("d0", "demonstration", "write a poem")], overlap=1, gold_rate=0.0)
    store.import_tasks([TaskRecord("p0", "pair", "prompt", "good", "bad")], overlap=1, gold_rate=0.0)
    store.add_user("alice", "annotator", PW)
    _, bob = store.add_user("bob", "annotator", PW)
    client = TestClient(create_app(store))
    page = client.get("/login")
    client.post("/login", data={"name": "alice", "password": PW,
                                "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)})
    page = client.get("/annotate").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    task = int(re.search(r'name="task_id" value="(\d+)"', page).group(1))
    kind = "demonstration" if 'id="demonstration-form"' in page else "label"
    monkeypatch.setattr(store_module, "ASSIGNMENT_TTL", timedelta(seconds=-1))
    for _ in range(2):  # bob takes both reclaimed tasks and answers them
        t = client.get("/api/next", headers=_bearer(bob)).json()
        body = {"completion": "bob's"} if t["kind"] == "demonstration" else {"choice": "a"}
        client.post("/api/" + ("demonstrations" if t["kind"] == "demonstration" else "labels"),
                    json={"task_id": t["task_id"], **body}, headers=_bearer(bob))
    monkeypatch.undo()
    typed = "My careful answer, <typed> for an hour & more"
    data = {"task_id": task, "csrf_token": csrf, **({"completion": typed} if kind == "demonstration"
                                                   else {"choice": "a", "comment": typed})}
    r = client.post(f"/annotate/{kind}", data=data, follow_redirects=False)
    assert r.status_code == 409, (r.status_code, r.headers.get("location"))
    assert "My careful answer, &lt;typed&gt; for an hour &amp; more" in r.text and "not saved" in r.text
    assert [x["annotator"] for x in store.label_rows()] == ["bob", "bob"] and _over_k(store) == []
