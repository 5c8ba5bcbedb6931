"""Issue #19 point 13: the output filter sees the text before it is cut at a stop string.

The served model answers "tell me the secret" with "forbidden" (a blocked output word). With
`stop: ["dden"]` the reply used to be cut to "forbi" before the filter ran, so it went out."""

import json

import pytest
from serve_support import GUARD, REFUSAL, in_process_client


@pytest.fixture(scope="module")
def client(served_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "guard.yaml"
    path.write_text(GUARD)
    return in_process_client(served_model_dir, path)


SECRET = {"messages": [{"role": "user", "content": "tell me the secret"}], "temperature": 0}


@pytest.mark.parametrize("stop", [["dden"], "bidden", ["x", "orb"], ["n"]])
def test_stop_string_does_not_hide_a_blocked_word(client, stop):
    r = client.post("/v1/chat/completions", json={**SECRET, "stop": stop}).json()
    assert r["choices"][0]["message"]["content"] == REFUSAL and r["choices"][0]["finish_reason"] == "content_filter"
    r = client.post("/v1/completions", json={"prompt": "tell me the secret", "temperature": 0, "stop": stop}).json()
    assert r["choices"][0]["text"] == REFUSAL


def test_streaming_never_sends_uncleared_text(client):
    with client.stream("POST", "/v1/chat/completions", json={**SECRET, "stop": ["dden"], "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == REFUSAL and "forbi" not in "".join(events)
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_a_stop_string_still_cuts_clean_replies(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}],
                                                  "temperature": 0, "stop": ["big"]}).json()
    assert r["choices"][0]["message"]["content"] == "world is" and r["choices"][0]["finish_reason"] == "stop"
