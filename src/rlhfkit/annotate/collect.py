"""``rlhfkit collect``: people in the loop of a pipeline round, through a running annotation server.

Pushes the round's pairs into ``rlhfkit annotate serve``'s queue (``POST /api/tasks`` as an admin,
K annotators per pair, optional gold pairs for the usual gold checks), waits until every pair has
its K labels, then pulls the majority labels and the round's agreement statistics (``GET
/api/export`` and ``GET /api/stats`` with ``?source=`` the round's batch name) and writes them as
the preference files the trainers read.

Nothing is lost on a restart, of the pipeline or of the server: the pairs carry stable ids
(``<batch>:<id>``), so pushing them again adds nothing; labels live in the server's database; a
server that is down is retried until the deadline. At the deadline the stage stops with one line
naming how many labels are missing and exit code 2; running the pipeline again resumes waiting
(finished stages are skipped). Talks plain HTTP with the standard library: no web stack needed here.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, dump_config, option, require


class LabelsPending(ValueError):
    """The deadline passed before every pair had its labels (the pipeline exits 2; rerun to resume)."""


@dataclass
class CollectConfig:
    """Push a round's pairs to a running `rlhfkit annotate serve`, wait for K labels each, pull them
    with agreement statistics as train.jsonl / eval.jsonl."""

    data: str = option("", "Pairs JSONL {id, prompt, response_a, response_b, ...} as `rlhfkit sample-pairs` writes (required).")
    output_dir: str = option("", "Where train.jsonl, eval.jsonl, per_annotator.jsonl and stats.json go (required).")
    server: str = option("http://127.0.0.1:8000", "Base URL of the annotation server.")
    token_env: str = option("RLHFKIT_ANNOTATE_TOKEN", "Environment variable holding an admin API token "
                                                      "(`rlhfkit annotate add-user --role admin`); never the token itself, "
                                                      "which would be saved in config.yaml.")
    batch: str = option("", "Name of this batch on the server (ids become <batch>:<id>); empty: the last two parts "
                            "of output_dir, e.g. round2/labels.")
    overlap: int = option(3, "K: different annotators per pair.")
    gold_data: str = option("", "Gold pairs JSONL (records with `gold`: \"a\" | \"b\") pushed with the batch; empty: none.")
    gold_rate: float = option(-1.0, "Share of each annotator's tasks that are gold pairs; -1 leaves the server's setting.")
    deadline_s: float = option(3600.0, "Seconds to wait for the labels; then exit 2 (rerun to keep waiting).")
    poll_s: float = option(5.0, "Seconds between progress checks.")
    eval_fraction: float = option(0.2, "Share of pairs held out as eval.jsonl (by id, the same on every rerun).")
    seed: int = option(0, "Seed of the train/eval split.")

    def check(self) -> None:
        require(self, "data", "output_dir", "server", "token_env")
        if self.overlap < 1:
            raise ConfigError(f"config: field 'overlap' must be >= 1, got {self.overlap}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"config: field 'eval_fraction' must be in [0, 1), got {self.eval_fraction}")


class Client:
    """An admin's JSON calls to the annotation server; network failures retried until ``deadline``."""

    def __init__(self, server: str, token: str, deadline: float):
        self.base, self.token, self.deadline = server.rstrip("/"), token, deadline
        self.down_since: float | None = None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> tuple[int, str]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        while True:
            req = urllib.request.Request(url, data=data, method=method, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    self.down_since = None
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                raise ValueError(f"{method} {url} -> {e.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    print(f"[rlhfkit collect] {self.base} unreachable ({getattr(e, 'reason', e)}); retrying", flush=True)
                if time.monotonic() >= self.deadline:
                    raise LabelsPending(f"{self.base} unreachable until the deadline") from None
                time.sleep(min(1.0, max(0.0, self.deadline - time.monotonic())))

    def json(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        return json.loads(self.call(method, path, body, query)[1])


def _read(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _records(rows: list[dict], batch: str, tag: str) -> list[dict]:
    return [{**r, "id": f"{batch}:{tag}{r.get('id', i)}"} for i, r in enumerate(rows, 1)]


def push(client: Client, cfg: CollectConfig, batch: str, pairs: list[dict]) -> dict:
    records = _records(pairs, batch, "") + (_records(_read(cfg.gold_data), batch, "gold:") if cfg.gold_data else [])
    added = unchanged = 0
    for start in range(0, len(records), 5000):
        body = {"records": records[start:start + 5000], "overlap": cfg.overlap, "source": batch,
                "gold_rate": cfg.gold_rate if cfg.gold_rate >= 0 else None}
        got = client.json("POST", "/api/tasks", body)
        added, unchanged = added + got["added"], unchanged + got["unchanged"]
    return {"added": added, "unchanged": unchanged}


def wait(client: Client, cfg: CollectConfig, batch: str) -> dict:
    """The batch's statistics once no label is missing; LabelsPending at the deadline."""
    last = None
    while True:
        stats = client.json("GET", "/api/stats", query={"source": batch})
        missing, pairs = stats["tasks"]["labels_missing"], stats["tasks"]["pairs"] - stats["tasks"]["gold_pairs"]
        if missing == 0:
            return stats
        if missing != last:
            print(f"[rlhfkit collect] {batch}: {missing} labels missing "
                  f"({stats['tasks']['tasks_complete']}/{pairs} pairs complete)", flush=True)
            last = missing
        if time.monotonic() >= client.deadline:
            raise LabelsPending(
                f"{batch}: {missing} of {pairs * cfg.overlap} labels still missing after {cfg.deadline_s:g} s "
                f"({stats['tasks']['tasks_complete']} of {pairs} pairs complete) at {cfg.server}; "
                "every label given is kept on the server: run the pipeline again to keep waiting")
        time.sleep(max(0.0, min(cfg.poll_s, client.deadline - time.monotonic())))


def run_collect(cfg: CollectConfig) -> dict:
    token = os.environ.get(cfg.token_env, "")
    if not token:
        raise ConfigError(f"config: field 'token_env': environment variable {cfg.token_env} is not set "
                          "(an admin's API token)")
    out = Path(cfg.output_dir)
    batch = cfg.batch or "/".join(out.resolve().parts[-2:])
    pairs = _read(cfg.data)
    t0 = time.monotonic()
    client = Client(cfg.server, token, t0 + cfg.deadline_s)
    pushed = push(client, cfg, batch, pairs)
    print(f"[rlhfkit collect] {batch}: {pushed['added']} pairs added, {pushed['unchanged']} already queued; "
          f"waiting for {cfg.overlap} labels each at {cfg.server}", flush=True)
    stats = wait(client, cfg, batch)
    majority = [json.loads(x) for x in client.call("GET", "/api/export", query={
        "mode": "majority", "source": batch})[1].splitlines() if x.strip()]
    per_annotator = client.call("GET", "/api/export", query={"mode": "per_annotator", "source": batch})[1]
    meta = {f"{batch}:{r.get('id', i)}": r for i, r in enumerate(pairs, 1)}
    extra = lambda row: {k: v for k, v in meta.get(row["id"], {}).items()  # noqa: E731
                         if k not in ("id", "prompt", "response_a", "response_b", "gold", "metadata")}
    rows = [{**extra(r), **r} for r in majority]
    held = sorted(meta)
    random.Random(cfg.seed).shuffle(held)
    held = set(held[:int(round(cfg.eval_fraction * len(held)))])
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train.jsonl", [r for r in rows if r["id"] not in held])
    _write(out / "eval.jsonl", [r for r in rows if r["id"] in held])
    (out / "per_annotator.jsonl").write_text(per_annotator, encoding="utf-8")
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    summary = {"batch": batch, "pairs": len(pairs), **pushed, "labels": stats.get("labels", {}),
               "train_pairs": sum(r["id"] not in held for r in rows), "eval_pairs": sum(r["id"] in held for r in rows),
               "dropped_no_majority": len(pairs) - len(rows), "agreement": _agreement(stats),
               "waited_seconds": round(time.monotonic() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    return summary


def _agreement(stats: dict) -> dict:
    keep = ("krippendorff_alpha", "fleiss_kappa", "flagged")
    return {**{k: stats[k] for k in keep if k in stats},
            "gold_accuracy": {u: s["gold_accuracy"] for u, s in stats.get("annotators", {}).items()
                              if s.get("gold_labels")}}


def _write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
