"""benchmarks/serve_batch.py times serving, not client setup: building an ``httpx.Client`` costs
~20 ms of Python (its SSL context) under the benchmark process's GIL, and 16 of them built inside
the clock were a third of a 16-client run (the HTTP ratio read 4.0x where the server gave ~7x).

The clock is faked: it moves only when a client is built, so ``load``'s seconds count the clients
built while it ran."""

import importlib.util
import types
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_batch.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("serve_batch_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clock = [0.0]

    def reply(request):
        return httpx.Response(200, json={"choices": [{"text": request.content.decode()[-5:]}],
                                         "usage": {"completion_tokens": 3}})

    def client(**kw):
        clock[0] += 1.0  # one second per client built
        return httpx.Client(transport=httpx.MockTransport(reply), **kw)

    monkeypatch.setattr(module, "httpx", types.SimpleNamespace(Client=client))
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return module


def test_client_setup_is_outside_the_clock(bench):
    bodies = [{"prompt": f"p{i}", "seed": i} for i in range(8)]
    seconds, tokens, texts = bench.load("http://127.0.0.1:1", bodies, clients=4)
    assert (seconds, tokens) == (0.0, 24)
    assert texts == [bench.httpx.Client(base_url="http://x").post("/", json=b).json()["choices"][0]["text"]
                     for b in bodies]  # every body answered, in order


def test_the_old_measurement_timed_the_setup(bench):
    seconds, _, _ = bench.load("http://127.0.0.1:1", [{"prompt": "p"}] * 8, clients=4, setup_timed=True)
    assert seconds == 4.0
