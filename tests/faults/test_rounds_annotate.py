"""People in the loop of iterated rounds, end to end, with a pipeline and a server killed mid-round.

A real ``rlhfkit annotate serve`` (uvicorn subprocess on 127.0.0.1; SQLite file or PostgreSQL) and
three simulated annotators driving its HTTP API (``GET /api/next``, ``POST /api/labels``), each
labelling with the world's Bradley-Terry annotator on the gold score. The pipeline (a subprocess,
``rlhfkit pipeline``) runs base -> SFT -> 2 rounds of [sample pairs from the latest policy ->
collect (push to the server, K=2 labels per pair, gold checks) -> mix with earlier rounds -> RM
continued from the last round's -> PPO continued from the last round's policy, KL to SFT] (the
per-round gold evaluation is left out here: it does not depend on who labels; the demo-world rounds run it).

1. no annotator yet, deadline 2 s: the pipeline exits 2 naming the missing labels;
2. a long deadline: SIGKILL the pipeline while it waits for round 1's labels;
3. annotators start; at half of round 1's labels the server gets SIGKILL; the pipeline is
   started again at once (it waits through the outage), the server 1 s later.

Then: every acknowledged label is in the database, none twice, every pair has exactly K; each
stage finished before a kill was skipped afterwards, not rerun (same run id); both rounds ran; a
run after the end skips every stage.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("annotate_load", ROOT / "benchmarks" / "annotate_load.py")
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)

pytestmark = pytest.mark.slow
K = 2
TOKEN_ENV = "RLHFKIT_TEST_ROUNDS_TOKEN"
TIMEOUT = 600  # bound on each pipeline run (seconds); about 30 s each on an idle 2-core machine


def pipeline_spec(out: Path, cache: Path, server: str, deadline: float, gold: Path) -> dict:
    small = {"max_length": 48, "max_prompt_length": 16}
    return {
        "output_dir": str(out), "defaults": {"seed": 0, **small},
        "stages": [
            {"name": "base", "stage": "world-base", "with": {"steps": 10, "hidden_size": 32, "num_layers": 1,
                                                                "cache_dir": str(cache)}},
            {"name": "data", "stage": "world-data", "with": {"n_sft": 200, "train_prompts_per_category": 2,
                                                             "eval_prompts_per_category": 1}},
            {"name": "sft", "stage": "sft", "with": {"model": "{base}", "data": "{data}/sft.jsonl", "max_steps": 10,
                                                     "batch_size": 16, "learning_rate": 1e-3}},
        ],
        "rounds": 2,
        "round": {"start": {"policy": "sft", "rm": "sft"}, "stages": [
            {"name": "pairs", "stage": "sample-pairs", "with": {"model": "{prev.policy}", "k": 4, "max_new_tokens": 12,
                                                                 "data": "{data}/prompts_train.jsonl"}},
            {"name": "labels", "stage": "collect", "with": {
                "data": "{pairs}/pairs.jsonl", "server": server, "token_env": TOKEN_ENV, "overlap": K,
                "gold_data": str(gold), "gold_rate": 0.1, "deadline_s": deadline, "poll_s": 0.2, "eval_fraction": 0.25}},
            {"name": "mix", "stage": "mix-pairs", "with": {"data": "{labels}/train.jsonl", "earlier_fraction": 1.0,
                                                           "earlier": ["{earlier.labels}/train.jsonl"]}},
            {"name": "rm", "stage": "rm", "with": {"model": "{prev.rm}", "data": "{mix}/train.jsonl",
                                                   "eval_data": "{labels}/eval.jsonl", "max_steps": 2, "batch_size": 8}},
            {"name": "policy", "stage": "ppo", "with": {
                "model": "{prev.policy}", "ref_model": "{sft}", "reward_model": "{rm}", "data": "{data}/prompts_train.jsonl",
                "max_steps": 2, "batch_size": 4, "max_new_tokens": 12, "ppo_epochs": 1, "learning_rate": 1e-4}},
        ]},
    }


class Annotators:
    """K+1 simulated annotators on the HTTP API, each a thread: label whatever the server serves,
    with the world's Bradley-Terry annotator; wait and ask again when nothing is left (the next
    round's pairs come later); retry through a server outage."""

    def __init__(self, base: str, tokens: list[str], prompt_files: list[Path]):
        self.base, self.tokens, self.prompt_files = base, tokens, prompt_files
        self.results, self.stop = load.Results(), threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i, t), daemon=True) for i, t in enumerate(tokens)]

    def start(self):
        for t in self.threads:
            t.start()

    def _prompts(self) -> dict:
        from rlhfkit.world.tasks import Prompt

        rows = [json.loads(x) for f in self.prompt_files for x in f.read_text().splitlines() if x.strip()]
        return {r["prompt"]: Prompt(r["prompt"], r["category"], r.get("subject") or "", r.get("answer") or "")
                for r in rows}

    def _run(self, i: int, token: str):
        from rlhfkit.world.annotators import SimulatedAnnotator

        annotator, prompts = SimulatedAnnotator(temperature=0.5, flip_rate=0.05, seed=i), self._prompts()
        deadline = time.monotonic() + TIMEOUT + 120
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.get("/api/next")
                    if r.status_code == 204:
                        time.sleep(0.2)
                        continue
                    task = r.raise_for_status().json()
                    choice = annotator.label(prompts[task["prompt"]], task["a"], task["b"])
                    r = client.post("/api/labels", json={"task_id": task["task_id"], "choice": choice})
                    if r.status_code in (200, 201):
                        self.results.ack(task["task_id"], token)
                    else:
                        with self.results.lock:
                            self.results.problems.append(f"POST /api/labels -> {r.status_code}: {r.text[:200]}")
                except (httpx.TransportError, httpx.HTTPStatusError):
                    time.sleep(0.1)


def _pipeline(path: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhfkit", "pipeline", "--config", str(path)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _markers(out: Path) -> dict:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["run_id"] for p in out.rglob(".rlhfkit-stage.json")}


def _batch_size(db: str, source: str) -> int:
    from rlhfkit.annotate.store import Store

    store = Store(db, migrate=False)
    try:
        counts = store.counts(source)
        return counts["pairs"] - counts["gold_pairs"]
    finally:
        store.close()


def _wait_for(cond, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rounds_cache")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    return str(tmp_path / "rounds.db") if request.param == "sqlite" else request.getfixturevalue("annotate_pg")()


def test_rounds_with_people_survive_kills(db, tmp_path, world_cache):
    from rlhfkit.annotate.store import Store
    from rlhfkit.world.annotators import pair_rows
    from rlhfkit.world.gold import gold_score
    from rlhfkit.world.tasks import Prompt

    gold = tmp_path / "gold.jsonl"  # gold checks: pairs whose better side the gold score knows
    rows = [r for r in pair_rows(7, 8) if r["response_a"] != r["response_b"]][:3]
    for r in rows:
        p = Prompt(r["prompt"], r["category"], r["subject"], r["answer"])
        r["gold"] = "a" if gold_score(p, r["response_a"]) > gold_score(p, r["response_b"]) else "b"
    gold.write_text("".join(json.dumps({**r, "id": f"g{i}"}) + "\n" for i, r in enumerate(rows)))
    store = Store(db)
    try:
        admin = store.add_user("lead", "admin")[1]
        tokens = [store.add_user(f"ann{i}", "annotator")[1] for i in range(K + 1)]
    finally:
        store.close()
    port = load.free_port()
    base, out, server_log = f"http://127.0.0.1:{port}", tmp_path / "run", tmp_path / "server.log"
    env = {**os.environ, TOKEN_ENV: admin, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    short, long_ = tmp_path / "short.yaml", tmp_path / "long.yaml"
    short.write_text(yaml.safe_dump(pipeline_spec(out, world_cache, base, 2.0, gold)))
    long_.write_text(yaml.safe_dump(pipeline_spec(out, world_cache, base, 600.0, gold)))
    server = load.start_server(db, port, server_log)
    restarted, pipe, clients = None, None, None
    try:
        load.wait_ready(base, server)
        # 1. nobody labels: the deadline passes, one clear line, exit 2
        first = subprocess.run([sys.executable, "-m", "rlhfkit", "pipeline", "--config", str(short)], env=env,
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert first.returncode == 2, first.stdout[-2000:] + first.stderr[-2000:]
        n1 = _batch_size(db, "round1/labels")
        assert n1 >= 8
        assert f"round1/labels: {n1 * K} of {n1 * K} labels still missing after 2 s" in first.stderr
        assert "run the pipeline again to keep waiting" in first.stderr
        before = _markers(out)
        assert set(before) == {"base", "data", "sft", "round1/pairs"}
        # 2. a long wait, killed
        log2 = tmp_path / "pipeline2.log"
        pipe = _pipeline(long_, env, log2)
        _wait_for(lambda: "waiting for 2 labels each" in log2.read_text(), 300, "round 1 pushed again", log2)
        os.kill(pipe.pid, signal.SIGKILL)
        pipe.wait(30)
        assert "0 pairs added" in log2.read_text() and _batch_size(db, "round1/labels") == n1  # nothing twice
        # 3. annotators; the server killed at half of round 1, the pipeline restarted meanwhile
        clients = Annotators(base, tokens, [out / "data" / "prompts_train.jsonl", gold])
        clients.start()
        _wait_for(lambda: clients.results.count() >= n1 * K // 2, 300, "half of round 1 labelled", server_log)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        acked_before_kill = set(clients.results.acked)
        log3 = tmp_path / "pipeline3.log"
        pipe = _pipeline(long_, env, log3)
        time.sleep(1.0)
        restarted = load.start_server(db, port, server_log)
        load.wait_ready(base, restarted)
        assert pipe.wait(TIMEOUT) == 0, log3.read_text()[-4000:]
    finally:
        if clients is not None:
            clients.stop.set()
            for t in clients.threads:
                t.join(30)
        for proc in (pipe, server, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    text = log3.read_text()
    for name in before:  # finished before the kills: skipped, the very same run
        assert f"{name}: unchanged, skipped" in text
    after = _markers(out)
    assert all(after[k] == v for k, v in before.items())
    assert {f"round{r}/{s}" for r in (1, 2) for s in ("labels", "mix", "rm", "policy")} <= set(after)
    assert not clients.results.problems, clients.results.problems[:5]
    check = load.verify(db, clients.results, tokens)
    assert check["lost"] == 0 and check["duplicated"] == 0, check
    store = Store(db, migrate=False)
    try:  # every pair of both rounds has exactly K labels (gold pairs go to every annotator)
        per_pair = Counter(r["task_id"] for r in store.label_rows() if r["gold"] is None)
        assert set(per_pair.values()) == {K} and len(per_pair) == n1 + _batch_size(db, "round2/labels")
    finally:
        store.close()
    sub = load.Results()
    sub.acked = acked_before_kill
    assert load.verify(db, sub, tokens)["lost"] == 0  # the labels acknowledged before the kill survived it
    n2 = _batch_size(db, "round2/labels")
    for r, n in ((1, n1), (2, n2)):
        summary = json.loads((out / f"round{r}" / "labels" / "summary.json").read_text())
        assert summary["labels"]["pairs"] >= n * K and summary["pairs"] == n
        assert summary["train_pairs"] + summary["eval_pairs"] + summary["dropped_no_majority"] == n
        assert len((out / f"round{r}" / "labels" / "train.jsonl").read_text().splitlines()) == summary["train_pairs"]
    mix2 = json.loads((out / "round2" / "mix" / "summary.json").read_text())
    assert mix2["earlier_pairs"] == json.loads((out / "round1" / "labels" / "summary.json").read_text())["train_pairs"]
    assert (out / "round2" / "policy" / "model.safetensors").exists()
    # and a run after the end trains nothing again: every stage of both rounds skipped, same run ids
    again = subprocess.run([sys.executable, "-m", "rlhfkit", "pipeline", "--config", str(long_)], env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0 and again.stdout.count("unchanged, skipped") == 3 + 2 * 5, again.stdout[-2000:]
    assert _markers(out) == after
