"""Issue #19, point 7: revoking a token, changing a password, deactivating a user.

Each is an ``rlhfkit annotate`` command run against the database of a live server, and each takes
effect on the very next request: the old API token gets 401, the old password stops working and
the user's open browser sessions end.
"""

import io
import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.cli import main
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.store import Store

PW = "old-password"


def _login(client, name, password):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                       follow_redirects=False)


def _logged_in(client):
    return client.get("/annotate", follow_redirects=False).status_code == 200


@pytest.fixture
def live(tmp_path):
    db = str(tmp_path / "accounts.db")
    store = Store(db)
    store.import_tasks([TaskRecord("p0", "pair", "prompt", "good", "bad")], overlap=2, gold_rate=0.0)
    tokens = {n: store.add_user(n, "annotator", PW)[1] for n in ("alice", "bob")}
    app = create_app(store)
    sessions = {}
    for name in tokens:
        sessions[name] = TestClient(app)
        assert _login(sessions[name], name, PW).headers["location"] == "/"
    yield db, tokens, sessions, TestClient(app)
    store.close()


def _me(client, token):
    return client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_revoke_token_stops_the_old_token_at_once(live, capsys):
    db, tokens, sessions, api = live
    assert _me(api, tokens["alice"]) == 200
    assert main(["revoke-token", "--db", db, "--name", "alice"]) == 0
    assert _me(api, tokens["alice"]) == 401 and _me(api, tokens["bob"]) == 200
    assert "no API token" in capsys.readouterr().out
    assert main(["revoke-token", "--db", db, "--name", "alice", "--new"]) == 0
    new = capsys.readouterr().out.split()[-1]
    assert _me(api, new) == 200 and _me(api, tokens["alice"]) == 401
    assert _logged_in(sessions["alice"])  # a token is not a browser session


def test_set_password_ends_the_users_sessions_and_the_old_password(live, monkeypatch):
    db, tokens, sessions, api = live
    monkeypatch.setattr("sys.stdin", io.StringIO("a new long passphrase\n"))
    assert main(["set-password", "--db", db, "--name", "alice", "--password-stdin"]) == 0
    assert not _logged_in(sessions["alice"]) and _logged_in(sessions["bob"])
    assert "error=" in _login(TestClient(api.app), "alice", PW).headers["location"]
    assert _login(TestClient(api.app), "alice", "a new long passphrase").headers["location"] == "/"
    assert _me(api, tokens["alice"]) == 200  # the API token is separate (revoke-token)


def test_deactivate_ends_sessions_tokens_and_logins_and_activate_restores_them(live, capsys):
    db, tokens, sessions, api = live
    assert main(["deactivate", "--db", db, "--name", "alice"]) == 0
    assert _me(api, tokens["alice"]) == 401 and not _logged_in(sessions["alice"])
    r = _login(TestClient(api.app), "alice", PW)
    assert r.status_code == 303 and "error=" in r.headers["location"]  # as a wrong password: reveals nothing
    assert _me(api, tokens["bob"]) == 200 and _logged_in(sessions["bob"])
    assert main(["activate", "--db", db, "--name", "alice"]) == 0
    assert _me(api, tokens["alice"]) == 200
    assert _login(TestClient(api.app), "alice", PW).headers["location"] == "/"


def test_account_commands_name_an_unknown_user_in_one_line(live, capsys):
    db = live[0]
    for argv in (["revoke-token", "--name", "carol"], ["deactivate", "--name", "carol"],
                 ["activate", "--name", "carol"]):
        assert main([*argv, "--db", db]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no user named 'carol'" in err, err
