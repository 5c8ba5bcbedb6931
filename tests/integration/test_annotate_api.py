"""The annotation server's API and pages through FastAPI's test client, on SQLite and PostgreSQL.

PostgreSQL tests use a fresh database per test (the `annotate_pg` fixture in tests/conftest.py).
"""

import json
import re
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.schema import assignments, labels, metadata
from rlhfkit.annotate.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    url = str(tmp_path / "annotate.db") if request.param == "sqlite" else request.getfixturevalue("annotate_pg")()
    s = Store(url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(str(tmp_path / "annotate.db"))
    yield s
    s.close()


def pairs(n, start=0, gold=None, prefix="p"):
    return [TaskRecord(f"{prefix}{i}", "pair", f"prompt {i}", f"good answer {i}", f"bad answer {i}", gold=gold)
            for i in range(start, start + n)]


def users(store, n, role="annotator"):
    return [store.add_user(f"{role}{i}", role, "secret-pw")[1] for i in range(n)]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def label_all(client, token, answer=lambda task: "a" if task["a"].startswith("good") else "b", limit=200):
    """Label until 204; the task ids answered, in order."""
    done = []
    for _ in range(limit):
        r = client.get("/api/next", headers=bearer(token))
        if r.status_code == 204:
            return done
        assert r.status_code == 200, r.text
        task = r.json()
        r = client.post("/api/labels", json={"task_id": task["task_id"], "choice": answer(task)}, headers=bearer(token))
        assert r.status_code == 201, r.text
        done.append(task["task_id"])
    raise AssertionError("annotator never ran out of tasks")


def test_every_api_route_refuses_a_request_without_a_token(sqlite_store):
    client = TestClient(create_app(sqlite_store))
    doc = client.get("/openapi.json").json()
    ops = [(path, method) for path, item in doc["paths"].items() if path.startswith("/api")
           for method in item if method in ("get", "post", "put", "patch", "delete")]
    assert {("/api/next", "get"), ("/api/labels", "post"), ("/api/stats", "get"), ("/api/export", "get"),
            ("/api/demonstrations", "post"), ("/api/skip", "post"), ("/api/undo", "post"),
            ("/api/guidelines", "put")} <= set(ops)
    assert not [p for p in doc["paths"] if not p.startswith("/api")]  # pages stay out of the API document
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, method in ops:
        url = re.sub(r"\{[^}]+\}", "1", path)
        assert doc["paths"][path][method].get("security"), (method, path)
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YTpi"},
                        {"Authorization": "Bearer "}):
            # A malformed body too: the token is checked first, so the answer is 401, not 422.
            r = client.request(method.upper(), url, headers=headers, content=b"{not json",
                               params={"mode": "majority"})
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["detail"] in ("missing bearer token: send 'Authorization: Bearer TOKEN'", "invalid token")


def test_wrong_role_is_403_with_a_message(sqlite_store):
    (token,) = users(sqlite_store, 1)
    client = TestClient(create_app(sqlite_store))
    for method, path, body in (("GET", "/api/stats", None), ("GET", "/api/export", None),
                               ("PUT", "/api/guidelines", {"markdown": "x"})):
        r = client.request(method, path, headers=bearer(token), json=body)
        assert r.status_code == 403 and r.json()["detail"] == "this route needs the admin role", (path, r.text)


def test_bad_bodies_are_4xx_with_a_message(sqlite_store):
    sqlite_store.import_tasks(pairs(2), overlap=1)
    (token,) = users(sqlite_store, 1)
    client = TestClient(create_app(sqlite_store))
    task = client.get("/api/next", headers=bearer(token)).json()
    cases = [
        ({"choice": "a"}, 422, "body.task_id: Field required"),
        ({"task_id": task["task_id"], "choice": "left"}, 422, "body.choice: Input should be 'a', 'b' or 'tie'"),
        ({"task_id": task["task_id"], "choice": "a", "strength": "huge"}, 422, "body.strength"),
        ({"task_id": task["task_id"], "choice": "a", "choise": "b"}, 422, "body.choise: Extra inputs"),
        ({"task_id": task["task_id"], "choice": "tie", "strength": "better"}, 422, "a tie has none"),
        ({"task_id": 999, "choice": "a"}, 404, "no task 999"),
    ]
    for body, status, message in cases:
        r = client.post("/api/labels", json=body, headers=bearer(token))
        assert r.status_code == status and message in r.json()["detail"], (body, r.status_code, r.text)
    r = client.post("/api/labels", content=b"{oops", headers={**bearer(token), "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"], r.text
    r = client.post("/api/demonstrations", json={"task_id": task["task_id"], "completion": "hi"}, headers=bearer(token))
    assert r.status_code == 422 and "answer it with POST /api/labels" in r.json()["detail"]
    assert sqlite_store.label_rows() == []


def test_k_distinct_annotators_never_twice_and_idempotent_labels(store):
    store.import_tasks(pairs(6), overlap=2)
    tokens = users(store, 3)
    client = TestClient(create_app(store))
    first = client.get("/api/next", headers=bearer(tokens[0])).json()
    again = client.get("/api/next", headers=bearer(tokens[0])).json()
    assert again["task_id"] == first["task_id"]  # the same task until it is answered
    assert set(first) == {"task_id", "kind", "prompt", "a", "b"}
    body = {"task_id": first["task_id"], "choice": "a", "strength": "much_better", "comment": "clear"}
    r1 = client.post("/api/labels", json=body, headers=bearer(tokens[0]))
    r2 = client.post("/api/labels", json={**body, "choice": "b"}, headers=bearer(tokens[0]))
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r2.json() == r1.json() and r1.json()["choice"] == "a" and r1.json()["margin"] == 1.0
    done = {t: label_all(client, t) for t in tokens}
    done[tokens[0]].insert(0, first["task_id"])
    for t, ids in done.items():
        assert len(ids) == len(set(ids)), "an annotator got the same pair twice"
    rows = store.label_rows()
    assert len(rows) == 12  # 6 pairs x K=2, nothing more
    per_task = {}
    for r in rows:
        per_task.setdefault(r["task_id"], []).append(r["annotator"])
    assert all(len(v) == 2 and len(set(v)) == 2 for v in per_task.values()) and len(per_task) == 6
    progress = client.get("/api/me", headers=bearer(tokens[0])).json()["progress"]
    assert progress == {"done": len(done[tokens[0]]), "remaining": 0}


def test_order_is_randomised_per_annotator_recorded_and_mapped_back(sqlite_store):
    sqlite_store.import_tasks(pairs(40), overlap=1)
    (token,) = users(sqlite_store, 1)
    (admin,) = users(sqlite_store, 1, "admin")
    client = TestClient(create_app(sqlite_store))
    seen_left = []

    def good_side(task):
        seen_left.append("a" if task["a"].startswith("good") else "b")
        return seen_left[-1]

    label_all(client, token, good_side)
    # P(all 40 on one side) = 2^-39: both orders must show up.
    assert 5 <= seen_left.count("a") <= 35, seen_left
    with sqlite_store.read() as conn:
        recorded = {r.task_id: r.left for r in conn.execute(select(assignments.c.task_id, assignments.c.left))}
    assert sorted(recorded.values()) == sorted("a" if s == "a" else "b" for s in seen_left)
    rows = [r for r in client.get("/api/export", headers=bearer(admin)).text.splitlines()]
    assert len(rows) == 40 and all('"chosen": "good answer' in r for r in rows)  # the choice maps back
    stats = client.get("/api/stats", headers=bearer(admin)).json()
    # the left response won exactly when the good answer happened to be shown on the left
    assert stats["position_bias"]["left_win_rate"] == pytest.approx(seen_left.count("a") / 40)
    assert stats["position_bias"]["labels"] == 40


def test_annotators_touch_only_their_own_tasks(sqlite_store):
    sqlite_store.import_tasks(pairs(3), overlap=1)
    alice, bob = users(sqlite_store, 2)
    client = TestClient(create_app(sqlite_store))
    task = client.get("/api/next", headers=bearer(alice)).json()
    for path, body in (("/api/labels", {"task_id": task["task_id"], "choice": "a"}),
                       ("/api/skip", {"task_id": task["task_id"]})):
        r = client.post(path, json=body, headers=bearer(bob))
        assert r.status_code == 403 and r.json()["detail"] == f"task {task['task_id']} is not assigned to you"
    assert client.get("/api/next", headers=bearer(bob)).json()["task_id"] != task["task_id"]


def test_skip_and_undo(store):
    store.import_tasks(pairs(2), overlap=1)
    alice, bob = users(store, 2)
    client = TestClient(create_app(store))
    assert client.post("/api/undo", headers=bearer(alice)).status_code == 404
    t1 = client.get("/api/next", headers=bearer(alice)).json()["task_id"]
    assert client.post("/api/skip", json={"task_id": t1}, headers=bearer(alice)).json()["status"] == "skipped"
    t2 = client.get("/api/next", headers=bearer(alice)).json()["task_id"]
    assert t2 != t1
    # the skipped pair's slot went back: with K=1 Bob gets it; Alice never sees it again
    assert client.get("/api/next", headers=bearer(bob)).json()["task_id"] == t1
    r = client.post("/api/labels", json={"task_id": t2, "choice": "b"}, headers=bearer(alice))
    assert r.status_code == 201
    assert client.post("/api/skip", json={"task_id": t2}, headers=bearer(alice)).status_code == 409
    undone = client.post("/api/undo", headers=bearer(alice))
    assert undone.status_code == 200 and undone.json()["task_id"] == t2
    assert client.get("/api/next", headers=bearer(alice)).json()["task_id"] == t2  # back, to answer again
    assert store.label_rows() == []
    r = client.post("/api/labels", json={"task_id": t2, "choice": "tie"}, headers=bearer(alice))
    assert r.status_code == 201 and r.json()["choice"] == "tie"
    assert [x["choice"] for x in store.label_rows()] == ["tie"]
    assert client.get("/api/next", headers=bearer(alice)).status_code == 204  # t1 skipped, t2 answered


def test_gold_pairs_at_rate_r_scored_per_annotator(sqlite_store):
    sqlite_store.import_tasks(pairs(20), overlap=1, gold_rate=0.25)
    sqlite_store.import_tasks(pairs(10, prefix="g", gold="a"), overlap=1)
    (token,) = users(sqlite_store, 1)
    (admin,) = users(sqlite_store, 1, "admin")
    client = TestClient(create_app(sqlite_store))
    served, golds = [], 0
    for _ in range(16):
        task = client.get("/api/next", headers=bearer(token)).json()
        served.append(task)
        is_gold = sqlite_store.task_rows()[task["task_id"]]["gold"] is not None
        golds += is_gold
        right = "a" if task["a"].startswith("good") else "b"
        choice = ("b" if right == "a" else "a") if is_gold and golds == 1 else right  # first gold pair wrong
        assert client.post("/api/labels", json={"task_id": task["task_id"], "choice": choice},
                           headers=bearer(token)).status_code == 201
    gold = [t for t in served if sqlite_store.task_rows()[t["task_id"]]["gold"] is not None]
    assert len(gold) == 4  # one in every block of round(1/0.25) = 4
    me = client.get("/api/stats", headers=bearer(admin)).json()["annotators"]["annotator0"]
    assert me["gold_labels"] == 4 and me["gold_accuracy"] == pytest.approx(0.75)
    export = client.get("/api/export", headers=bearer(admin))
    assert export.headers["x-rows"] == "12" and "gold=4" in export.headers["x-dropped"]


def test_demonstrations(store):
    store.import_tasks([TaskRecord("d1", "demonstration", "write a greeting", draft="hello there"),
                        TaskRecord("d2", "demonstration", [{"role": "user", "content": "say bye"}])], overlap=1)
    store.import_tasks(pairs(1), overlap=1)
    (token,) = users(store, 1)
    (admin,) = users(store, 1, "admin")
    client = TestClient(create_app(store))
    drafts = {"write a greeting": "hello there"}
    answered = []
    for _ in range(2):
        task = client.get("/api/next", params={"kind": "demonstration"}, headers=bearer(token)).json()
        assert task["kind"] == "demonstration" and "a" not in task
        key = task["prompt"] if isinstance(task["prompt"], str) else task["prompt"][0]["content"]
        assert task["draft"] == drafts.get(key)
        r = client.post("/api/labels", json={"task_id": task["task_id"], "choice": "a"}, headers=bearer(token))
        assert r.status_code == 422 and "POST /api/demonstrations" in r.json()["detail"]
        body = {"task_id": task["task_id"], "completion": f"answer to {key}"}
        assert client.post("/api/demonstrations", json=body, headers=bearer(token)).status_code == 201
        assert client.post("/api/demonstrations", json=body, headers=bearer(token)).status_code == 200
        answered.append(key)
    assert sorted(answered) == ["say bye", "write a greeting"]
    assert client.get("/api/next", params={"kind": "demonstration"}, headers=bearer(token)).status_code == 204
    assert client.get("/api/next", headers=bearer(token)).json()["kind"] == "pair"
    assert client.post("/api/demonstrations", json={"task_id": 1, "completion": ""},
                       headers=bearer(token)).status_code == 422
    rows = [json.loads(x) for x in
            client.get("/api/export", params={"mode": "demonstrations"}, headers=bearer(admin)).text.splitlines()]
    assert sorted(rows, key=lambda r: r["id"]) == [
        {"prompt": "write a greeting", "completion": "answer to write a greeting", "id": "d1", "annotator": "annotator0"},
        {"prompt": [{"role": "user", "content": "say bye"}], "completion": "answer to say bye", "id": "d2",
         "annotator": "annotator0"}]


def test_guidelines_api(sqlite_store):
    (token,) = users(sqlite_store, 1)
    (admin,) = users(sqlite_store, 1, "admin")
    client = TestClient(create_app(sqlite_store))
    assert client.get("/api/guidelines", headers=bearer(token)).json() == {"markdown": "", "version": 0}
    assert client.put("/api/guidelines", json={"markdown": "# Be kind"}, headers=bearer(admin)).json() == {"version": 1}
    assert client.get("/api/guidelines", headers=bearer(token)).json() == {"markdown": "# Be kind", "version": 1}


def test_concurrent_annotators_respect_k_and_uniqueness(store):
    """8 threads label through the store at once: every pair gets exactly K labels from K people."""
    store.import_tasks(pairs(12), overlap=3)
    ids = [store.user_by_token(t).id for t in users(store, 8)]
    errors = []

    def work(uid):
        try:
            for _ in range(40):
                task = store.next_task(uid, progress=False)
                if task is None:
                    return
                label, created = store.submit_label(uid, task["task_id"], "a")
                again, created_again = store.submit_label(uid, task["task_id"], "b")
                assert created and not created_again and again == label
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    with store.read() as conn:
        per_task = conn.execute(select(labels.c.task_id, func.count(), func.count(func.distinct(labels.c.user_id)))
                                .group_by(labels.c.task_id)).all()
    assert len(per_task) == 12 and all(n == 3 and distinct == 3 for _, n, distinct in per_task), per_task


def test_migrations_build_exactly_the_schema_and_go_down_and_up(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert store.revision() == "0002"
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.downgrade("base")
    assert store.revision() is None
    store.migrate()
    assert store.revision() == "0002"


# ---------------------------------------------------------------- pages: sessions, CSRF, roles


def login(client, name, password="secret-pw"):
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": csrf},
                       follow_redirects=False)


def csrf_of(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_login_sessions_csrf_and_roles(sqlite_store):
    sqlite_store.import_tasks(pairs(2), overlap=1)
    users(sqlite_store, 1)
    users(sqlite_store, 1, "admin")
    sqlite_store.set_guidelines("# Guidelines\n\nPrefer the **kind** answer.")
    client = TestClient(create_app(sqlite_store))
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/login"
    r = login(client, "annotator0", "wrong")
    assert r.status_code == 303 and "error=" in r.headers["location"] and "rlhfkit_session" not in r.cookies
    # login without the CSRF token of the login form is refused
    bare = TestClient(create_app(sqlite_store))
    assert bare.post("/login", data={"name": "annotator0", "password": "secret-pw"}).status_code == 403
    r = login(client, "annotator0")
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=lax" in r.headers["set-cookie"].lower()
    # guidelines come before the first task
    r = client.get("/annotate", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/guidelines"
    page = client.get("/guidelines")
    assert "<strong>kind</strong>" in page.text and "before your first task" in page.text
    assert client.post("/guidelines/ack", data={"version": 1, "csrf_token": "forged"}).status_code == 403
    client.post("/guidelines/ack", data={"version": 1, "csrf_token": csrf_of(page.text)})
    page = client.get("/annotate")
    assert page.status_code == 200 and 'id="label-form"' in page.text and "/static/annotate.js" in page.text
    task_id = int(re.search(r'name="task_id" value="(\d+)"', page.text).group(1))
    form = {"task_id": task_id, "choice": "a", "strength": "better", "comment": "ok"}
    assert client.post("/annotate/label", data=form, follow_redirects=False).status_code == 403  # no CSRF token
    assert sqlite_store.label_rows() == []
    r = client.post("/annotate/label", data={**form, "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and len(sqlite_store.label_rows()) == 1
    assert client.get("/admin").status_code == 403  # annotators see no dashboard
    admin = TestClient(create_app(sqlite_store))
    login(admin, "admin0")
    dash = admin.get("/admin")
    assert dash.status_code == 200 and "Krippendorff" in dash.text and 'id="export-majority"' in dash.text
    assert admin.get("/admin/export?mode=majority").headers["content-type"].startswith("application/x-ndjson")
    for page_path in ("/static/annotate.js", "/static/style.css"):
        assert client.get(page_path).status_code == 200
    assert "https://" not in page.text + dash.text  # nothing from a CDN


def test_abandoned_assignments_are_reclaimed_and_late_answers_never_exceed_k(sqlite_store, monkeypatch):
    import rlhfkit.annotate.store as store_module
    from datetime import timedelta

    sqlite_store.import_tasks(pairs(1), overlap=1)
    alice, bob = users(sqlite_store, 2)
    client = TestClient(create_app(sqlite_store))
    task = client.get("/api/next", headers=bearer(alice)).json()
    assert client.get("/api/next", headers=bearer(bob)).status_code == 204  # the only slot is Alice's
    monkeypatch.setattr(store_module, "ASSIGNMENT_TTL", timedelta(seconds=-1))  # Alice's is now too old
    assert client.get("/api/next", headers=bearer(bob)).json()["task_id"] == task["task_id"]
    monkeypatch.undo()
    r = client.post("/api/labels", json={"task_id": task["task_id"], "choice": "a"}, headers=bearer(bob))
    assert r.status_code == 201, r.text
    # Alice answers late, after the task went to Bob: refused (K=1 holds; issue #19), never stored twice
    r = client.post("/api/labels", json={"task_id": task["task_id"], "choice": "a"}, headers=bearer(alice))
    assert r.status_code == 409 and "not saved" in r.json()["detail"], r.text
    assert len(sqlite_store.label_rows()) == 1
    assert client.get("/api/next", headers=bearer(alice)).status_code == 204


def test_demonstration_page_and_done_page(sqlite_store):
    sqlite_store.import_tasks([TaskRecord("d1", "demonstration", "write a greeting", draft="hello <b>there</b>")],
                              overlap=1, gold_rate=0.0)
    users(sqlite_store, 1)
    client = TestClient(create_app(sqlite_store))
    login(client, "annotator0")
    page = client.get("/annotate")  # no guidelines set: straight to the task
    assert 'id="demonstration-form"' in page.text
    assert "hello &lt;b&gt;there&lt;/b&gt;</textarea>" in page.text  # the draft, escaped
    task_id = int(re.search(r'name="task_id" value="(\d+)"', page.text).group(1))
    r = client.post("/annotate/demonstration", data={"task_id": task_id, "completion": "Hi! Nice to meet you.",
                                                     "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert [x["completion"] for x in sqlite_store.label_rows()] == ["Hi! Nice to meet you."]
    done = client.get("/annotate")
    assert 'id="all-done"' in done.text and "You answered 1 task." in done.text and 'id="undo"' in done.text


def test_post_tasks_adds_a_named_batch_once_and_source_selects_it(store):
    """POST /api/tasks (admin): a batch under a name, pushed twice, is queued once; ?source= gives
    that batch's counts (labels_missing = K per pair minus labels given), statistics and export."""
    admin, = users(store, 1, "admin")
    ann = users(store, 2)
    client = TestClient(create_app(store))
    store.import_tasks(pairs(2, prefix="old"), overlap=2)
    recs = [{"id": f"r1:{i}", "prompt": f"q {i}", "response_a": f"good {i}", "response_b": f"bad {i}",
             "category": "dish"} for i in range(3)] + [{"id": "r1:g", "prompt": "g", "response_a": "good g",
                                                         "response_b": "bad g", "gold": "a"}]
    body = {"records": recs, "overlap": 2, "source": "round1"}
    assert client.post("/api/tasks", json=body, headers=bearer(admin)).json() == {"added": 4, "unchanged": 0, "gold": 1}
    r = client.post("/api/tasks", json=body, headers=bearer(admin))
    assert r.status_code == 201 and r.json() == {"added": 0, "unchanged": 4, "gold": 0}
    assert client.post("/api/tasks", json=body, headers=bearer(ann[0])).status_code == 403
    changed = {**body, "records": [{**recs[0], "response_b": "other"}]}
    assert client.post("/api/tasks", json=changed, headers=bearer(admin)).status_code == 409
    bad = {**body, "records": [{"id": "x", "prompt": "p", "response_a": "a\x00", "response_b": "b"}]}
    assert client.post("/api/tasks", json=bad, headers=bearer(admin)).status_code == 422
    r = client.post("/api/tasks", json={**body, "records": [{"prompt": "p", "response_a": "a"}]}, headers=bearer(admin))
    assert r.status_code == 422 and "record 1: field 'response_b': missing" in r.json()["detail"]
    stats = lambda: client.get("/api/stats", params={"source": "round1"}, headers=bearer(admin)).json()  # noqa: E731
    assert stats()["tasks"] == {"pairs": 4, "demonstrations": 0, "gold_pairs": 1, "tasks_complete": 0,
                                "open_assignments": 0, "labels_missing": 6}
    label_all(client, ann[0])  # 5 pairs (2 old, 3 of the batch); no gold due at gold rate 0
    assert stats()["tasks"]["labels_missing"] == 3 and stats()["labels"]["pairs"] == 3
    label_all(client, ann[1])
    assert stats()["tasks"]["labels_missing"] == 0 and stats()["tasks"]["tasks_complete"] == 3
    rows = [json.loads(x) for x in client.get("/api/export", params={"source": "round1"},
                                              headers=bearer(admin)).text.splitlines()]
    assert sorted(r["id"] for r in rows) == ["r1:0", "r1:1", "r1:2"] and all(r["labels"] == 2 for r in rows)
    assert len(client.get("/api/export", headers=bearer(admin)).text.splitlines()) == 5
