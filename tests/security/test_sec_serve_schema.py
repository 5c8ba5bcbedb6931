"""Issue #19 point 10: a strict request schema. Every malformed body is a 400 in OpenAI's error
shape naming the field (`error.param`), never a 5xx, and a value of the wrong JSON type is refused
rather than coerced (`"stream": "false"` used to stream, since bool("false") is True)."""

import pytest
from serve_support import in_process_client

CHAT = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0}


@pytest.fixture(scope="module")
def client(served_model_dir):
    return in_process_client(served_model_dir)


def _refused(client, body, param, path="/v1/chat/completions", content=None):
    r = client.post(path, json=body) if content is None else client.post(
        path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (body if content is None else content[:80], r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error", error
    assert error["param"] == param or param and error["param"].startswith(param + "."), error
    assert "\n" not in error["message"] and (param is None or param in error["message"]), error
    return error["message"]


def test_deeply_nested_json_is_400_not_500(client):
    for depth in (1000, 100_000):
        _refused(client, None, None, content=b"[" * depth + b"]" * depth)
        nested = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
        _refused(client, None, None, content=nested)


@pytest.mark.parametrize("field,value", [("stream", "false"), ("stream", 0), ("stream", "true"),
                                         ("max_tokens", "5"), ("max_tokens", 5.5), ("max_tokens", True),
                                         ("temperature", "0"), ("temperature", True), ("top_p", "1"), ("seed", "1"),
                                         ("n", "1"), ("n", True), ("stop", 3), ("stop", ["a", 1]), ("stop", {"a": 1}),
                                         ("stream_options", "yes"), ("stream_options", {"include_usage": "true"}),
                                         ("user", 5), ("model", 5), ("logprobs", "false"), ("echo", 0)])
def test_wrong_json_types_are_refused_naming_the_field(client, field, value):
    _refused(client, {**CHAT, field: value}, field.split(".")[0])


def test_string_false_no_longer_streams(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": "false"})
    assert r.status_code == 400 and not r.headers["content-type"].startswith("text/event-stream")
    ok = client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "world is big"


@pytest.mark.parametrize("messages,param", [
    ("hello", "messages"), ([], "messages"), ([["user", "hello"]], "messages.0"),
    ([{"role": "king", "content": "x"}], "messages.0.role"), ([{"role": 1, "content": "x"}], "messages.0.role"),
    ([{"content": "x"}], "messages.0.role"), ([{"role": "user", "content": 5}], "messages.0.content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages.0.content"),
    ([{"role": "user", "content": "x", "evil": 1}], "messages.0.evil"),
])
def test_bad_messages_name_the_field(client, messages, param):
    _refused(client, {"messages": messages}, param)


@pytest.mark.parametrize("prompt", [5, None, [1, 2, 3], ["a", "b"], "", {"text": "x"}])
def test_bad_prompts_name_the_field(client, prompt):
    _refused(client, {"prompt": prompt}, "prompt", path="/v1/completions")


@pytest.mark.parametrize("content", [b"", b"nul", b"\xff\xfe", b'{"prompt": "a"', b"[1, 2]", b'"text"',
                                     b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}",
                                     b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "temperature": 1e999}',
                                     b'{"prompt": "\\ud800"}'])
def test_garbage_bodies_are_400(client, content):
    r = client.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (content[:60], r.status_code, r.text[:300])
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_valid_requests_still_work(client):
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2.0, "stop": "big", "seed": 3, "n": 1,
                                                  "stream": False, "user": "u", "logprobs": False, "top_p": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "world is"
    parts = {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}
    r = client.post("/v1/chat/completions", json={"messages": [parts], "temperature": 0, "max_completion_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "world is big"
    r = client.post("/v1/completions", json={"prompt": ["hello"], "temperature": 0.0, "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "world is big"
