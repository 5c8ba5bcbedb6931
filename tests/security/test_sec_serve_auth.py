"""Issue #19 point 8: `rlhfkit serve --api_key KEY` (or RLHFKIT_API_KEY) requires
`Authorization: Bearer KEY` on every /v1 route; /health stays open; the compare is constant-time."""

import httpx
import pytest
from serve_support import in_process_client, start_server, stop_server

KEY = "s3cret-key-for-tests"
HELLO = [{"role": "user", "content": "hello"}]
V1 = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", {"messages": HELLO}),
      ("POST", "/v1/completions", {"prompt": "hello"})]


@pytest.fixture(scope="module")
def env_keyed_server(served_model_dir, tmp_path_factory):
    """A real `rlhfkit serve` whose key comes only from the environment variable."""
    proc, port, _ = start_server(served_model_dir, tmp_path_factory.mktemp("auth"), env={"RLHFKIT_API_KEY": KEY})
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}])
def test_env_key_is_required_on_every_v1_route(env_keyed_server, headers):
    for method, path, body in V1:
        r = httpx.request(method, env_keyed_server + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, r.status_code, r.text[:200])
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error" and "API key" in r.json()["error"]["message"]
    assert httpx.get(env_keyed_server + "/health", timeout=30).status_code == 200


def test_env_key_lets_the_right_bearer_through(env_keyed_server):
    auth = {"Authorization": f"Bearer {KEY}"}
    for method, path, body in V1:
        r = httpx.request(method, env_keyed_server + path, json={**(body or {}), "temperature": 0} if body else None,
                          headers=auth, timeout=30)
        assert r.status_code == 200, (path, r.text[:300])
    r = httpx.post(env_keyed_server + "/v1/completions", json={"prompt": "hello", "temperature": 0}, headers=auth,
                   timeout=30)
    assert r.json()["choices"][0]["text"] == "world is big"


def test_unauthenticated_request_is_refused_before_its_body_is_read(served_model_dir):
    """A body that is not even JSON still gets 401, not 400: the key is checked first."""
    client = in_process_client(served_model_dir, api_key=KEY)
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    ok = client.post("/v1/chat/completions", json={"messages": HELLO, "temperature": 0},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "world is big"
    assert client.get("/health").status_code == 200


def test_no_key_means_open_and_the_flag_wins_over_the_env(served_model_dir, monkeypatch):
    from rlhfkit.serve import ServeConfig
    from rlhfkit.serve_gate import api_key_of

    assert in_process_client(served_model_dir).get("/v1/models").status_code == 200
    monkeypatch.delenv("RLHFKIT_API_KEY", raising=False)
    assert api_key_of(ServeConfig(model="m")) == ""
    monkeypatch.setenv("RLHFKIT_API_KEY", "from-env")
    assert api_key_of(ServeConfig(model="m")) == "from-env"
    assert api_key_of(ServeConfig(model="m", api_key="from-flag")) == "from-flag"


def test_key_compare_is_constant_time():
    """The check goes through hmac.compare_digest (whose time does not depend on where the strings
    differ), never ==: checked on the source, since timing on a shared CPU would be noise."""
    import inspect

    from rlhfkit import serve_gate as serve

    source = inspect.getsource(serve.authorized)
    assert "hmac.compare_digest" in source and "==" not in source
    assert serve.authorized(f"Bearer {KEY}", KEY) and not serve.authorized(f"Bearer {KEY[:-1]}", KEY)
    assert not serve.authorized(None, KEY) and not serve.authorized("Bearer ", KEY)
    assert not serve.authorized("Bearer ключ", KEY)  # non-ASCII header text: refused, not a crash
