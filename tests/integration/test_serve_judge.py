"""`rlhfkit serve` driven by the official `openai` client (chat, streaming, completions, guard
refusals on input and output, errors), and `rlhfkit judge` against it as a real endpoint.

The served model is a bigram model (tests/conftest.py) whose replies are known word for word:
"hello" -> "world is big", "... the secret" -> "forbidden", and anything ending in a word it
does not know (every judge prompt) -> "A": a judge that always prefers the first response.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai")

GUARD = """refusal: I can't help with that.
log: decisions.jsonl
input:
  blocklist:
    - bomb
    - regex: 'pass(word|phrase)'
output:
  blocklist: [forbidden]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served_model_dir, tmp_path_factory):
    """`rlhfkit serve` in a subprocess on a free port; waits at most 90 s for /v1/models."""
    root = tmp_path_factory.mktemp("serve")
    (root / "guard.yaml").write_text(GUARD)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (root / "serve.log").open("w")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve", "--model", served_model_dir, "--port", str(port),
                             "--guard", str(root / "guard.yaml"), "--served_model_name", "policy"],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=30, max_retries=0)
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rlhfkit serve exited with {proc.returncode}: {(root / 'serve.log').read_text()[-2000:]}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("rlhfkit serve did not answer within 90 s")
                time.sleep(0.3)
        yield {"url": url, "client": client, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _chat(client, text, **kw):
    return client.chat.completions.create(model="policy", messages=[{"role": "user", "content": text}],
                                          temperature=0, **kw)


def test_models_chat_and_completions(server):
    client = server["client"]
    assert [m.id for m in client.models.list().data] == ["policy"]
    reply = _chat(client, "hello")
    assert reply.choices[0].message.content == "world is big"
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 4  # 3 words + <eos>
    cut = _chat(client, "hello", max_tokens=2)
    assert cut.choices[0].message.content == "world is" and cut.choices[0].finish_reason == "length"
    assert _chat(client, "hello", stop=["big"]).choices[0].message.content == "world is"
    done = client.completions.create(model="policy", prompt="say hello", max_tokens=8, temperature=0)
    assert done.choices[0].text == "world is big" and done.choices[0].finish_reason == "stop"


def test_streaming_chat(server):
    stream = _chat(server["client"], "hello", stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "world is big" and len(pieces) == 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    with_usage = list(_chat(server["client"], "hello", stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 4


def test_streaming_completions(server):
    chunks = list(server["client"].completions.create(model="policy", prompt="hello", max_tokens=8, temperature=0,
                                                      stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "world is big"
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.object == "text_completion" for c in chunks)


def test_guard_refuses_on_input_and_on_output(server):
    client = server["client"]
    for text in ("how to build a Bomb", "what is the password"):  # input blocklist: word, regex
        r = _chat(client, text)
        assert r.choices[0].message.content == "I can't help with that." and r.choices[0].finish_reason == "content_filter"
    r = _chat(client, "tell me the secret")  # the model says "forbidden": the output filter catches it
    assert r.choices[0].message.content == "I can't help with that." and r.choices[0].finish_reason == "content_filter"
    streamed = [c for c in _chat(client, "tell me the secret", stream=True)]
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "I can't help with that." and "forbidden" not in text
    assert streamed[-1].choices[0].finish_reason == "content_filter"
    log = [json.loads(x) for x in (server["root"] / "decisions.jsonl").read_text().splitlines()]
    blocked = [(e["stage"], e["reason"]) for e in log if e["blocked"]]
    assert ("input", "blocklist: bomb") in blocked and ("input", "blocklist: /pass(word|phrase)/") in blocked
    assert ("output", "blocklist: forbidden") in blocked
    assert any(not e["blocked"] for e in log)  # allowed requests are logged too


def test_bad_requests_get_clear_errors(server):
    client = server["client"]
    with pytest.raises(openai.BadRequestError, match="'n' = 2 is not supported"):
        _chat(client, "hello", n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "x"}], temperature=5)
    with pytest.raises(openai.NotFoundError, match="serves 'policy'"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="unsupported parameter 'tools'"):
        _chat(client, "hello", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])


def test_rlhfkit_judge_against_rlhfkit_serve(server, tmp_path):
    """The served model answers "A" to every judge prompt: a judge rigged to prefer the first
    response. Judged in both orders every pair is a tie, none is written, and the summary shows
    the position bias (+0.5: the first slot won every raw verdict). A rerun costs no calls (cache),
    and `ties: keep` writes the ties as pair rows."""
    from rlhfkit.cli import main
    from rlhfkit.world.toy import preference_records

    pairs = [{"id": str(i), "prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]}
             for i, r in enumerate(preference_records(6, seed=3))]
    data, out = tmp_path / "pairs.jsonl", tmp_path / "judged.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = tmp_path / "judge.yaml"
    config.write_text(f"data: {data}\njudge: {server['url']}\njudge_model: policy\noutput: {out}\nconcurrency: 4\n")
    done = subprocess.run([sys.executable, "-m", "rlhfkit", "judge", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "judged.jsonl.summary.json").read_text())
    assert summary["pairs"] == 6 and summary["ties"] == 6 and summary["rows_written"] == 0
    assert summary["first_position_win_rate"] == 1.0 and summary["position_bias"] == 0.5
    assert summary["endpoint"]["calls"] == 12 and summary["source"] == "judge:policy"
    assert out.read_text() == ""
    assert main(["judge", "--config", str(config), "--ties", "keep"]) == 0
    summary = json.loads((tmp_path / "judged.jsonl.summary.json").read_text())
    assert summary["endpoint"]["calls"] == 0 and summary["endpoint"]["cached"] == 12
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["tie"] and r["confidence"] == 0.5 for r in rows)
    assert rows[0]["response_a"] == pairs[0]["response_a"] and rows[0]["source"] == "judge:policy"
