"""Load test of the annotation server: many annotators labelling at once, nothing lost or doubled.

Starts ``rlhfkit annotate serve`` in a subprocess on 127.0.0.1 (SQLite file, or a fresh PostgreSQL
database that is dropped afterwards), creates N annotators and enough pairs for the wanted number
of labels (pairs x overlap K), and runs one thread per annotator: ``GET /api/next`` then
``POST /api/labels``, until the server answers 204. One submission in ten is sent twice (a client
retry); the second answer must be 200 with the same label. Then it reads the database back:

- lost: acknowledged labels (201 or 200) missing from the database (must be 0);
- duplicated: (task, annotator) pairs with more than one label (must be 0);
- over-assigned: tasks with more than K labels (must be 0).

Latency is per request, measured in the client (connection reuse, same machine), p50/p95.

    .venv/bin/python benchmarks/annotate_load.py --db sqlite --annotators 50 --submissions 2000
    .venv/bin/python benchmarks/annotate_load.py --db postgres --annotators 50 --submissions 2000

``tests/faults/test_annotate_kill.py`` reuses these pieces at a smaller size, with a SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

PG_ADMIN = os.environ.get("RLHFKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, log_path: str | Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "rlhfkit", "annotate", "serve", "--db", db, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout} s")


def create_pg_database() -> tuple[str, callable]:
    """(URL of a new, uniquely named PostgreSQL database, a function that drops it)."""
    import psycopg

    name = f"rlhfkit_load_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def prepare(db: str, annotators: int, pairs: int, overlap: int) -> list[str]:
    """Import ``pairs`` synthetic pairs and create annotators; their API tokens."""
    from rlhfkit.annotate.records import TaskRecord
    from rlhfkit.annotate.store import Store

    store = Store(db)
    try:
        records = [TaskRecord(f"load-{i}", "pair", f"prompt {i}: say something kind", f"kind answer {i}",
                              f"rude answer {i}") for i in range(pairs)]
        store.import_tasks(records, overlap=overlap)
        return [store.add_user(f"annotator-{u:03d}", "annotator")[1] for u in range(annotators)]
    finally:
        store.close()


class Results:
    """What the clients saw, shared between threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked: set[tuple[int, str]] = set()  # (task_id, token) answered 201/200
        self.latency = {"next": [], "label": []}
        self.created = self.repeated = self.retry_ok = self.errors = 0
        self.problems: list[str] = []

    def ack(self, task_id: int, token: str) -> None:
        with self.lock:
            self.acked.add((task_id, token))

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def annotate_until_done(base: str, token: str, results: Results, deadline: float, repeat_rate: float = 0.1,
                        seed: int = 0) -> None:
    """One annotator: label until 204; retries a request that failed on the network (server down)."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        while time.monotonic() < deadline:
            try:
                t0 = time.perf_counter()
                r = client.get("/api/next")
                results.latency["next"].append(time.perf_counter() - t0)
                if r.status_code == 204:
                    return
                r.raise_for_status()
                task = r.json()
                body = {"task_id": task["task_id"], "choice": "a" if task["a"].startswith("kind") else "b",
                        "strength": rng.choice([None, "slightly_better", "better", "much_better"])}
                t0 = time.perf_counter()
                r = client.post("/api/labels", json=body)
                results.latency["label"].append(time.perf_counter() - t0)
                if r.status_code not in (200, 201):
                    with results.lock:
                        results.errors += 1
                        results.problems.append(f"POST /api/labels -> {r.status_code}: {r.text[:200]}")
                    continue
                results.ack(task["task_id"], token)
                with results.lock:
                    results.created += r.status_code == 201
                    results.retry_ok += r.status_code == 200  # the label was stored before a crash
                if rng.random() < repeat_rate:  # a client retry of the same submission
                    again = client.post("/api/labels", json=body)
                    with results.lock:
                        results.repeated += 1
                        if again.status_code != 200 or again.json()["label_id"] != r.json()["label_id"]:
                            results.problems.append(f"repeat of task {task['task_id']} -> {again.status_code}")
            except (httpx.TransportError, httpx.HTTPStatusError):
                time.sleep(0.05)  # the server is down or restarting: try again
        with results.lock:
            results.problems.append("deadline reached before the annotator was done")


def run_clients(base: str, tokens: list[str], results: Results, timeout: float) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    threads = [threading.Thread(target=annotate_until_done, args=(base, tok, results, deadline), kwargs={"seed": i},
                                daemon=True) for i, tok in enumerate(tokens)]
    for t in threads:
        t.start()
    return threads


def verify(db: str, results: Results, tokens: list[str]) -> dict:
    """Compare what the clients were told with what the database holds."""
    from sqlalchemy import func, select

    from rlhfkit.annotate.auth import digest
    from rlhfkit.annotate.schema import labels, tasks, users
    from rlhfkit.annotate.store import Store

    store = Store(db, migrate=False)
    try:
        with store.read() as conn:
            by_hash = {r.token_hash: r.id for r in conn.execute(select(users.c.id, users.c.token_hash))}
            rows = conn.execute(select(labels.c.task_id, labels.c.user_id)).all()
            dup = conn.execute(select(func.count()).select_from(
                select(labels.c.task_id, labels.c.user_id).group_by(labels.c.task_id, labels.c.user_id)
                .having(func.count() > 1).subquery())).scalar()
            over = conn.execute(select(func.count()).select_from(
                select(labels.c.task_id).join(tasks, tasks.c.id == labels.c.task_id)
                .group_by(labels.c.task_id, tasks.c.overlap).having(func.count() > tasks.c.overlap).subquery())).scalar()
    finally:
        store.close()
    stored = {(t, u) for t, u in rows}
    acked = {(t, by_hash[digest(tok)]) for t, tok in results.acked}
    return {"stored": len(rows), "acknowledged": len(acked), "lost": len(acked - stored),
            "unacknowledged_stored": len(stored - acked), "duplicated": dup, "over_assigned": over}


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return {"n": len(s), "p50_ms": round(pick(0.50), 1), "p95_ms": round(pick(0.95), 1), "max_ms": round(s[-1] * 1000, 1)}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def run_once(kind: str, annotators: int, submissions: int, overlap: int, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="annotate-load-"))
    drop = None
    if kind == "sqlite":
        db = str(tmp / "load.db")
    elif kind == "postgres":
        db, drop = create_pg_database()
    else:
        db = kind
    try:
        pairs = -(-submissions // overlap)
        tokens = prepare(db, annotators, pairs, overlap)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(db, port, tmp / "server.log")
        try:
            wait_ready(base, server)
            results = Results()
            t0 = time.perf_counter()
            threads = run_clients(base, tokens, results, timeout)
            for t in threads:
                t.join(timeout + 5)
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(30)
        check = verify(db, results, tokens)
    finally:
        if drop:
            drop()
    return {"database": kind, "annotators": annotators, "pairs": pairs, "overlap": overlap,
            "expected_labels": pairs * overlap, "wall_s": round(wall, 1),
            "labels_per_s": round(check["stored"] / wall, 1), "repeats_sent": results.repeated,
            "errors": results.errors, "problems": results.problems[:5], **check,
            "latency_next": percentiles(results.latency["next"]), "latency_label": percentiles(results.latency["label"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", action="append", help="sqlite, postgres or a database URL (repeatable; default both)")
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--submissions", type=int, default=2000)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600, help="seconds before the clients give up")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "runs": []}
    ok = True
    for kind in args.db or ["sqlite", "postgres"]:
        r = run_once(kind, args.annotators, args.submissions, args.overlap, args.timeout)
        out["runs"].append(r)
        ok &= (r["lost"] == 0 and r["duplicated"] == 0 and r["over_assigned"] == 0 and r["errors"] == 0
               and r["stored"] == r["expected_labels"] and not r["problems"])
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print("OK" if ok else "FAILED: labels lost, duplicated or refused")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
