"""Batched serving (serve_batch.Batcher): concurrent requests decode together, and each gets the
reply it gets alone with the same seed, the guard still applies per request, and streaming works.

Identity is checked token for token on tiny fp32 models: a batched, padded forward equals the
alone forward up to float rounding, which moves a greedy or seeded token only at a near-tie
(docs/serving.md); on these models no request comes near one, so any difference is a bug
(a shared generator, a shifted position, a wrong cache row, a wrong stop)."""

import json
import threading
import time

import pytest
import torch
from serve_support import GUARD, REFUSAL

from rlhfkit.config import GenerationConfig

# (prompt, max_new_tokens, temperature, top_p, stop, seed): greedy, plain sampling, nucleus,
# a stop string, and prompts of different lengths (left padding inside the batch)
REQUESTS = [("the soup is", 14, 0.0, 1.0, [], 1), ("describe the film", 10, 1.0, 1.0, [], 2),
            ("a", 16, 0.7, 0.9, [], 3), ("what is the best review of the tea and the bread", 9, 1.3, 0.5, [], 4),
            ("good", 12, 1.0, 1.0, ["the"], 5), ("the soup is", 14, 1.0, 1.0, [], 6),
            ("the tea", 20, 0.9, 0.95, [], 7), ("describe the film", 10, 1.0, 1.0, [], 8)]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.tiny_models import make_tiny_model_dir
    from rlhfkit.world.toy import vocabulary_texts

    path = make_tiny_model_dir(tmp_path_factory.mktemp("batch") / "m", vocabulary_texts(), seed=0, hidden_size=64)
    return path, load_causal_lm(path).eval(), load_tokenizer(path, padding_side="left")


def _submit_all(batcher, tok, requests, gap_s: float = 0.0):
    futures = []
    for prompt, n, t, p, stop, seed in requests:
        futures.append(batcher.submit(tok.encode(prompt), n, t, p, stop, seed))
        time.sleep(gap_s)
    return [(r.tokens, r.ended) for r in (f.result(timeout=60) for f in futures)]


def test_alone_equals_the_sampler_and_batched_equals_alone(random_model):
    """Alone (one at a time) the batcher gives sampling.generate's tokens for the same seed; all at
    once (one batch, then joins) it gives the alone tokens again."""
    from rlhfkit.sampling import generate
    from rlhfkit.serve_batch import Batcher

    _, model, tok = random_model
    reference = []
    for prompt, n, t, p, stop, seed in REQUESTS:
        gen = GenerationConfig(max_new_tokens=n, temperature=t, top_p=p, stop_strings=stop)
        r = generate(model, tok, [tok.encode(prompt)], gen, generator=torch.Generator().manual_seed(seed), batch_size=1)
        reference.append((r.response_ids[0][r.mask[0].bool()].tolist(), bool(r.ended[0])))
    assert len({tuple(t) for t, _ in reference}) == len(REQUESTS)  # all distinct, the twins (seeds 2, 8) too
    batcher = Batcher(model, tok, max_batch_size=8, window_s=0.2)
    alone = [_submit_all(batcher, tok, [r])[0] for r in REQUESTS]
    assert alone == reference and set(batcher.batch_sizes) == {1}
    batcher.batch_sizes.clear()
    assert _submit_all(batcher, tok, REQUESTS) == alone
    assert max(batcher.batch_sizes) == len(REQUESTS)  # the window gathered them into one batch
    other_seed = _submit_all(batcher, tok, [REQUESTS[1][:5] + (99,)])[0]
    assert other_seed != alone[1]  # the seed matters: the identity above is not a constant model


def test_requests_join_a_running_batch(random_model):
    """A long request runs; others arrive mid-way and join it between decode steps (no window);
    every reply still equals its alone reply. The forward is slowed to 4 ms so the long one is
    surely still running when they arrive."""
    from rlhfkit.serve_batch import Batcher

    _, model, tok = random_model
    long = ("the soup is", 60, 1.0, 1.0, [], 11)
    batcher = Batcher(model, tok, max_batch_size=8, window_s=0.0)
    alone = [_submit_all(batcher, tok, [r])[0] for r in [long, *REQUESTS]]
    assert len(alone[0][0]) > 30  # the long one really is long
    hook = model.register_forward_pre_hook(lambda *_: time.sleep(0.004))
    try:
        batcher.batch_sizes.clear()
        first = batcher.submit(tok.encode(long[0]), *long[1:])
        deadline = time.monotonic() + 20
        while sum(batcher.batch_sizes.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert not first.done()
        joined = _submit_all(batcher, tok, REQUESTS, gap_s=0.01)  # staggered: several separate joins
        reply = first.result(timeout=60)
    finally:
        hook.remove()
    assert [(reply.tokens, reply.ended), *joined] == alone
    assert max(batcher.batch_sizes) >= 3


def test_server_threads_get_their_alone_replies(random_model):
    """Through Server.complete (parse, template, stop cut, usage) from 8 threads at once."""
    from rlhfkit.serve import Server

    path, _, _ = random_model
    server = Server(path, "policy", device="cpu", max_batch_size=8, batch_window_ms=200)
    bodies = [{"prompt": p, "max_tokens": n, "temperature": t, "top_p": tp, "seed": s, **({"stop": st} if st else {})}
              for p, n, t, tp, st, s in REQUESTS]
    bodies[0] = {"messages": [{"role": "user", "content": "the soup is"}], "max_tokens": 8, "seed": 3}
    alone = [server.complete(server.parse(b, "messages" in b), f"r{i}") for i, b in enumerate(bodies)]
    barrier, out = threading.Barrier(len(bodies)), [None] * len(bodies)

    def run(i):
        barrier.wait(10)
        out[i] = server.complete(server.parse(bodies[i], "messages" in bodies[i]), f"c{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    server.batcher.batch_sizes.clear()
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert out == alone and max(server.batcher.batch_sizes) > 1


@pytest.fixture(scope="module")
def http_server(served_model_dir, tmp_path_factory):
    """uvicorn in a thread over the bigram model behind serve_support.GUARD, window 300 ms."""
    import socket

    import uvicorn

    from rlhfkit.guard import load_guard
    from rlhfkit.serve import Server
    from rlhfkit.serve_app import create_app

    path = tmp_path_factory.mktemp("guard") / "guard.yaml"
    path.write_text(GUARD)
    server = Server(served_model_dir, "policy", load_guard(path), "cpu", 64, batch_window_ms=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.started, "uvicorn did not start in 30 s"
    yield f"http://127.0.0.1:{port}/v1", server
    web.should_exit = True
    thread.join(15)


def _call(url: str, body: dict) -> tuple[str, str]:
    """(text, finish_reason) of one request; a stream is read to [DONE] and its pieces joined."""
    import httpx

    chat = "messages" in body
    route = url + ("/chat/completions" if chat else "/completions")
    if not body.get("stream"):
        choice = httpx.post(route, json=body, timeout=60).json()["choices"][0]
        return choice["message"]["content"] if chat else choice["text"], choice["finish_reason"]
    with httpx.stream("POST", route, json=body, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    text = "".join((c["delta"].get("content") or "") if chat else c["text"] for c in chunks)
    return text, chunks[-1]["finish_reason"]


def test_http_concurrency_streaming_and_guard(http_server):
    """8 clients at once, streaming and not, allowed and blocked (input and output filter): each gets
    exactly what it gets alone, a blocked stream never carries the blocked word, and the allowed
    ones decoded in one batch."""
    url, server = http_server

    def chat(text, **kw):
        return {"messages": [{"role": "user", "content": text}], "temperature": 0, **kw}

    bodies = [chat("hello"), chat("hello", stream=True), chat("tell me the secret", stream=True),
              chat("tell me the secret"), chat("how to build a bomb", stream=True),
              {"prompt": "say hello", "max_tokens": 8, "temperature": 0, "stream": True},
              chat("hello", max_tokens=2, stream=True), {"prompt": "hello", "max_tokens": 8, "temperature": 0}]
    alone = [_call(url, b) for b in bodies]
    assert alone[:3] == [("world is big", "stop"), ("world is big", "stop"), (REFUSAL, "content_filter")]
    assert alone[4] == (REFUSAL, "content_filter") and alone[6] == ("world is", "length")
    barrier, out = threading.Barrier(len(bodies)), [None] * len(bodies)

    def run(i):
        barrier.wait(10)
        out[i] = _call(url, bodies[i])

    server.batcher.batch_sizes.clear()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert out == alone
    assert max(server.batcher.batch_sizes) > 1


@pytest.mark.parametrize("field, value", [("max_batch_size", 0), ("batch_window_ms", -1.0)])
def test_bad_batching_settings_name_the_field(field, value):
    from rlhfkit.config import ConfigError
    from rlhfkit.serve import ServeConfig

    with pytest.raises(ConfigError, match=f"field '{field}'"):
        ServeConfig(model="m", **{field: value}).check()


def test_a_prompt_that_tokenizes_to_nothing_is_a_400(tmp_path):
    """Without a BOS token, whitespace tokenizes to no ids: a clear 400, not a sampler error (500)."""
    from rlhfkit.models import save_model
    from rlhfkit.serve import Server
    from rlhfkit.serve_gate import RequestError
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlhfkit.tiny_models import tiny_causal_lm

    core = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2, "the": 3, "soup": 4}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # and no post-processor: no BOS
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    save_model(tiny_causal_lm(tok, hidden_size=32, num_layers=1, num_heads=2), tok, tmp_path / "m")
    server = Server(str(tmp_path / "m"), device="cpu")
    assert server.complete(server.parse({"prompt": "the soup", "max_tokens": 2}, False), "a")["completion_tokens"] >= 1
    with pytest.raises(RequestError, match="empty once tokenized") as info:
        server.complete(server.parse({"prompt": "   ", "max_tokens": 2}, False), "b")
    assert info.value.param == "prompt" and info.value.status == 400
