"""Issue #19, points 3-5: what the annotation server accepts in a request.

3. Integers out of the database's range were a 500 ({"task_id": 2147483648} on PostgreSQL's
   int4, 9223372036854775808 on SQLite): every id and version is range-checked in the request
   schema, a 422 names the field, on both databases, on the API and on every form.
4. Browser forms skipped the API's limits (a 1,000,000-character comment was stored whole): the
   forms are validated by the API's own request models.
5. A guidelines acknowledgement of a future version (1000000) was accepted and let the annotator
   skip the next change: only the current version can be acknowledged.
"""

import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.store import Store

PW = "secret-pw"
HUGE = [2**31, 2**63, -(2**63) - 1, 10**30]  # int4 overflow, int8 overflow (both ends), far beyond


@pytest.fixture(params=["sqlite", "postgres"])
def world(request, tmp_path):
    url = str(tmp_path / "input.db") if request.param == "sqlite" else request.getfixturevalue("annotate_pg")()
    store = Store(url)
    store.import_tasks([TaskRecord(f"p{i}", "pair", f"prompt {i}", f"good {i}", f"bad {i}") for i in range(3)]
                       + [TaskRecord("d0", "demonstration", "write")], overlap=1, gold_rate=0.0)
    _, token = store.add_user("alice", "annotator", PW)
    client = TestClient(create_app(store))
    page = client.get("/login")
    client.post("/login", data={"name": "alice", "password": PW, "csrf_token": _csrf(page.text)})
    yield store, client, {"Authorization": f"Bearer {token}"}
    store.close()


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _form_csrf(client):
    return _csrf(client.get("/guidelines").text)


API = [("/api/labels", {"choice": "a"}), ("/api/skip", {}), ("/api/demonstrations", {"completion": "text"})]
FORMS = [("/annotate/label", "task_id", {"choice": "a"}), ("/annotate/skip", "task_id", {}),
         ("/annotate/demonstration", "task_id", {"completion": "text"}), ("/guidelines/ack", "version", {})]


def test_out_of_range_ids_are_422_naming_the_field_on_api_and_forms(world):
    store, client, auth = world
    failures = []
    for value in HUGE:
        for path, extra in API:
            r = client.post(path, json={"task_id": value, **extra}, headers=auth)
            if r.status_code != 422 or "task_id" not in r.json().get("detail", ""):
                failures.append((path, value, r.status_code, r.text[:200]))
        for path, field, extra in FORMS:
            r = client.post(path, data={field: str(value), **extra, "csrf_token": _form_csrf(client)},
                            follow_redirects=False)
            if r.status_code != 422 or field not in r.text:
                failures.append((path, value, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(str, failures))
    assert store.label_rows() == []
    # in range but unknown: the usual 404, never a 5xx
    assert client.post("/api/labels", json={"task_id": 2**31 - 1, "choice": "a"}, headers=auth).status_code == 404


def test_forms_apply_the_apis_length_limits(world):
    """A 1,000,000-character comment (the API caps 5,000) and a 100,001-character demonstration (cap
    100,000) through the page forms: 422 naming the field, nothing stored, the text kept in the page."""
    store, client, auth = world
    pair = store.next_task(store.user_by_token(auth["Authorization"][7:]).id, kind="pair", progress=False)
    r = client.post("/annotate/label", data={"task_id": pair["task_id"], "choice": "a", "comment": "x" * 1_000_000,
                                             "csrf_token": _form_csrf(client)}, follow_redirects=False)
    assert r.status_code == 422 and "comment" in r.text and "5000" in r.text, (r.status_code, r.text[:300])
    assert store.label_rows() == []
    assert client.post("/api/labels", json={"task_id": pair["task_id"], "choice": "a", "comment": "x" * 5001},
                       headers=auth).status_code == 422  # the same limit as the API
    demo = client.get("/api/next", params={"kind": "demonstration"}, headers=auth).json()["task_id"]
    r = client.post("/annotate/demonstration", data={"task_id": demo, "completion": "y" * 100_001,
                                                     "csrf_token": _form_csrf(client)}, follow_redirects=False)
    assert r.status_code == 422 and "completion" in r.text and "y" * 100_001 in r.text
    assert store.label_rows() == []
    # within the limits the same forms store the answer
    r = client.post("/annotate/label", data={"task_id": pair["task_id"], "choice": "a", "comment": "z" * 5000,
                                             "csrf_token": _form_csrf(client)}, follow_redirects=False)
    assert r.status_code == 303 and [x["comment"] for x in store.label_rows()] == ["z" * 5000]


def test_only_the_current_guidelines_version_can_be_acknowledged(world):
    store, client, auth = world
    store.set_guidelines("# version 1")
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/guidelines"
    r = client.post("/guidelines/ack", data={"version": 1_000_000, "csrf_token": _form_csrf(client)},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/guidelines?error="), r.headers.get("location")
    assert client.get("/guidelines", params={"error": "x"}).status_code == 200
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/guidelines"  # still unread
    r = client.post("/guidelines/ack", data={"version": 1, "csrf_token": _form_csrf(client)}, follow_redirects=False)
    assert r.headers["location"] == "/annotate"
    assert client.get("/annotate", follow_redirects=False).status_code == 200
    store.set_guidelines("# version 2")  # the next change is shown again before the next task
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/guidelines"
    r = client.post("/guidelines/ack", data={"version": 1, "csrf_token": _form_csrf(client)}, follow_redirects=False)
    assert r.headers["location"].startswith("/guidelines?error=")  # a stale page acknowledges nothing
    assert client.get("/annotate", follow_redirects=False).headers["location"] == "/guidelines"


def test_text_a_database_cannot_store_is_422_not_500(world):
    """NUL characters (PostgreSQL refuses them) in every text field of the API and of every form:
    a 422 naming the field (a login: just a failed login), never a 5xx, nothing stored."""
    store, client, auth = world
    boss_token = store.add_user("boss", "admin", PW)[1]
    admin = TestClient(client.app, raise_server_exceptions=False)
    page = admin.get("/login")
    assert admin.post("/login", data={"name": "boss", "password": PW, "csrf_token": _csrf(page.text)},
                      follow_redirects=False).headers["location"] == "/"
    pair = client.get("/api/next", params={"kind": "pair"}, headers=auth).json()["task_id"]
    demo = client.get("/api/next", params={"kind": "demonstration"}, headers=auth).json()["task_id"]
    bad = "before\x00after"
    api = [("POST", "/api/labels", {"task_id": pair, "choice": "a", "comment": bad}, auth, "comment"),
           ("POST", "/api/demonstrations", {"task_id": demo, "completion": bad}, auth, "completion"),
           ("PUT", "/api/guidelines", {"markdown": bad}, {"Authorization": f"Bearer {boss_token}"}, "markdown")]
    for method, path, body, headers, field in api:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 422 and field in r.json()["detail"], (path, r.status_code, r.text[:200])
    forms = [(client, "/annotate/label", {"task_id": pair, "choice": "a", "comment": bad}, "comment"),
             (client, "/annotate/demonstration", {"task_id": demo, "completion": bad}, "completion"),
             (admin, "/admin/guidelines", {"markdown": bad}, "markdown")]
    for who, path, data, field in forms:
        r = who.post(path, data={**data, "csrf_token": _form_csrf(who)}, follow_redirects=False)
        assert r.status_code == 422 and field in r.text, (path, r.status_code, r.text[:200])
    anon = TestClient(client.app, raise_server_exceptions=False)
    r = anon.post("/login", data={"name": bad, "password": bad, "csrf_token": _csrf(anon.get("/login").text)},
                  follow_redirects=False)
    assert r.status_code == 303 and "error=" in r.headers["location"]
    assert store.label_rows() == [] and store.guidelines() == ("", 0)


def test_api_ids_of_the_wrong_json_type_are_422_not_coerced(world):
    """Found by the schemathesis run: pydantic's lax mode read `{"task_id": true}` as task 1 (200)
    and `"1"` as 1; the JSON API takes integers only (the page forms still send text)."""
    store, client, auth = world
    failures = []
    for value in (True, False, "1", 1.5):
        for path, extra in API:
            r = client.post(path, json={"task_id": value, **extra}, headers=auth)
            if r.status_code != 422 or "task_id" not in r.json().get("detail", ""):
                failures.append((path, value, r.status_code, r.text[:200]))
    assert failures == []
