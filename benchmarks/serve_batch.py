"""Batched serving throughput: generated tokens/s of ``rlhfkit serve`` at 1, 4 and 16 concurrent clients.

For each model it starts ``rlhfkit serve`` in a subprocess on 127.0.0.1 (``--threads`` torch
threads) and sends the same ``--requests`` completion requests (world prompts, ``max_tokens``
fixed, temperature 1, a seed per request) from C client threads at once, each sending its next
request as soon as its last one is answered (a closed loop). Each client thread's
``httpx.Client`` is built before the clock starts: real clients have theirs already, and building
one is ~20 ms of Python (its SSL context), so 16 built inside the clock under this process's GIL
were a third of a 16-client run (the "client setup timed (old)" row, at 16 clients, repeats that
old measurement in the same run; RESULTS.md entries before 2026-12-05 are all of that kind).
Client threads, client processes and one asyncio client measured the same once setup was out of
the clock (within ~10%, 64 requests, 16 clients, under load), so the clients stay threads.
Where HTTP still trails in-process (2026-12-05, profiled): the server's batcher thread does not
wait for the GIL (its step wall time = its CPU time + its run-queue wait, from /proc schedstat),
so what is left is CPU on a shared 2-core machine: ~1 ms of HTTP work per request in the server
(uvicorn, routing, JSON) and the client's own, both taken from the cores the decode loop runs on.
Tokens are the real ones the server reports (``usage.completion_tokens``: a random-init model
ends a reply at EOS now and then, and those tokens are not counted). Each level reports tokens/s
and its ratio to one client; then the same 16-client load against a server with
``--max_batch_size 1`` (the one-at-a-time server this replaces), in the same run. First, the same
loads through ``serve.Server`` in the benchmark's own process (threads calling ``complete``: no
HTTP, no client process), which shows the engine's scaling apart from the web layer and the
client (on a shared 2-core machine those take CPU from the server). Every reply at every level is
compared with the one-client reply to the same request (same seed): the count of identical
replies is reported.

Models (fp32, random init: tokens/s do not depend on what the weights learned):
- demo: the demo world's base-model shape (world tokenizer trained as ``world.base`` trains it,
  Llama, hidden 128, 2 layers), freshly initialised; ``--demo_model DIR`` serves a built one
  instead (e.g. ``runs/demo/sft``);
- larger: the same tokenizer, hidden 384, 6 layers, 6 heads (``tiny_models.tiny_causal_lm``).

    .venv/bin/python benchmarks/serve_batch.py                      # ~6 min on 2 idle cores
    .venv/bin/python benchmarks/serve_batch.py --requests 8 --max_tokens 8 --models demo --no_record  # a check

Results are appended to benchmarks/RESULTS.md (unless ``--no_record``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

SIZES = {"demo": {"hidden_size": 128, "num_layers": 2, "num_heads": 4},
         "larger": {"hidden_size": 384, "num_layers": 6, "num_heads": 6}}


def build_models(root: Path, names: list[str], demo_model: str) -> dict[str, tuple[str, int]]:
    """{name: (folder, parameter count)}."""
    from rlhfkit.models import save_model
    from rlhfkit.tiny_models import tiny_causal_lm
    from rlhfkit.world.base import corpus, train_tokenizer
    from rlhfkit.world.tasks import vocabulary

    tok = train_tokenizer(corpus(0, 20000) + [" ".join(vocabulary())])
    out = {}
    for name in names:
        if name == "demo" and demo_model:
            from rlhfkit.models import load_causal_lm

            out[name] = (demo_model, sum(p.numel() for p in load_causal_lm(demo_model).parameters()))
            continue
        model = tiny_causal_lm(tok, max_positions=512, seed=0, **SIZES[name])
        save_model(model, tok, root / name)
        out[name] = (str(root / name), sum(p.numel() for p in model.parameters()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, threads: int, args: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve", "--model", model, "--port", str(port),
                                 "--served_model_name", "m", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rlhfkit serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("rlhfkit serve did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(url: str, bodies: list[dict], clients: int, setup_timed: bool = False) -> tuple[float, int, list[str]]:
    """(seconds, completion tokens, texts) for ``bodies`` sent by ``clients`` closed-loop threads.

    Each thread's ``httpx.Client`` is built before the clock starts (a real client has its
    connection library loaded already; building one is ~20 ms of Python, its SSL context, and
    16 of them under this process's GIL were a third of a 16-client run). ``setup_timed``: build
    them inside the clock, as this benchmark did before 2026-12-05 (kept to show the difference)."""
    texts: list[str | None] = [None] * len(bodies)
    tokens = [0] * len(bodies)
    errors: list[str] = []

    def make() -> httpx.Client:
        return httpx.Client(base_url=url, timeout=600)

    ready = [None if setup_timed else make() for _ in range(clients)]

    def client(k: int) -> None:
        with ready[k] or make() as http:
            for i in range(k, len(bodies), clients):
                r = http.post("/v1/completions", json=bodies[i])
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    return
                body = r.json()
                texts[i], tokens[i] = body["choices"][0]["text"], body["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return seconds, sum(tokens), texts


def in_process(model: str, bodies: list[dict], levels: list[int], threads: int) -> list[dict]:
    """The same loads through ``serve.Server.complete`` in this process (parse, tokenize, batcher;
    no HTTP, no client process): the engine's own scaling, apart from the web layer."""
    import torch

    from rlhfkit.serve import Server

    torch.set_num_threads(threads)
    server = Server(model, "m", device="cpu")
    rows = []
    for clients in [levels[0]] + levels:  # the first pass warms up
        texts: list[str | None] = [None] * len(bodies)
        tokens = [0] * len(bodies)

        def client(k: int) -> None:
            for i in range(k, len(bodies), clients):
                out = server.complete(server.parse(bodies[i], chat=False), f"b{i}")
                texts[i], tokens[i] = out["text"], out["completion_tokens"]

        pool = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - start
        rows.append({"clients": clients, "seconds": seconds, "tokens": sum(tokens), "tok_s": sum(tokens) / seconds,
                     "texts": texts})
    return rows[1:]


def bench_model(name: str, model: str, bodies: list[dict], levels: list[int], threads: int, root: Path) -> list[dict]:
    rows = []
    for r in in_process(model, bodies, levels, threads):
        rows.append({"model": name, "server": "in-process, no HTTP", **r})
        print(f"  {name:6s} {'in-process':17s} {r['clients']:3d} clients: {r['tokens']} tokens in {r['seconds']:6.2f} s = "
              f"{r['tok_s']:8.1f} tok/s", flush=True)
    old = "batched, client setup timed (old)"
    for args, runs in (([], [(c, "batched") for c in levels] + [(max(levels), old)]),
                       (["--max_batch_size", "1"], [(max(levels), "max_batch_size 1")])):
        proc, url = start_server(model, threads, args, root / f"{name}.log")
        try:
            load(url, bodies[:min(4, len(bodies))], 2)  # warm-up: first-call allocations, thread pools
            for clients, row_label in runs:
                seconds, tokens, texts = load(url, bodies, clients, setup_timed=row_label == old)
                rows.append({"model": name, "server": row_label, "clients": clients, "seconds": seconds,
                             "tokens": tokens, "tok_s": tokens / seconds, "texts": texts})
                print(f"  {name:6s} {row_label:17s} {clients:3d} clients: {tokens} tokens in {seconds:6.2f} s = "
                      f"{tokens / seconds:8.1f} tok/s", flush=True)
        finally:
            stop(proc)
    return rows


def table(rows: list[dict], params: dict[str, int]) -> str:
    lines = ["| model (params) | server | clients | tokens | s | tokens/s | vs 1 client | replies = 1-client replies |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = "batched" if r["server"] != "in-process, no HTTP" else r["server"]  # the 1-client row of its kind
        one = next(x for x in rows if x["model"] == r["model"] and x["server"] == base and x["clients"] == 1)
        same = sum(a == b for a, b in zip(r["texts"], one["texts"]))
        lines.append(f"| {r['model']} ({params[r['model']] / 1e6:.2f}M) | {r['server']} | {r['clients']} | {r['tokens']} "
                     f"| {r['seconds']:.2f} | {r['tok_s']:.1f} | **{r['tok_s'] / one['tok_s']:.2f}x** "
                     f"| {same}/{len(r['texts'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="demo,larger", help="comma-separated: demo, larger")
    ap.add_argument("--demo_model", default="", help="serve this built model as 'demo' instead of a fresh one")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (the same ones at every level)")
    ap.add_argument("--max_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--no_record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    from rlhfkit.world.tasks import make_prompts

    names, levels = args.models.split(","), [int(c) for c in args.clients.split(",")]
    prompts = [p.text for p in make_prompts(0, args.requests, split="eval")][:args.requests]
    bodies = [{"model": "m", "prompt": p, "max_tokens": args.max_tokens, "temperature": 1.0, "seed": i}
              for i, p in enumerate(prompts)]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rlhfkit-serve-bench-") as tmp:
        root = Path(tmp)
        models = build_models(root, names, args.demo_model)
        rows = [r for name in names for r in bench_model(name, models[name][0], bodies, levels, args.threads, root)]
    params = {name: n for name, (_, n) in models.items()}
    report = table(rows, params)
    print(report)
    minutes = (time.monotonic() - began) / 60
    if args.no_record:
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import torch
    import transformers

    demo_kind = f"`{args.demo_model}`" if args.demo_model else "a fresh model of the demo base's shape"
    entry = (f"\n### {datetime.date.today()}, {os.cpu_count()} cores, {cpu}; {minutes:.1f} min\n\n"
             f"- Command: `.venv/bin/python benchmarks/serve_batch.py {' '.join(argv or sys.argv[1:])}`\n"
             f"- torch {torch.__version__}, transformers {transformers.__version__}; server threads {args.threads}; "
             f"{args.requests} requests per level, max_tokens {args.max_tokens}, temperature 1, seed per request; "
             f"demo = {demo_kind}. Load average at the end: {os.getloadavg()[0]:.2f}.\n\n{report}\n")
    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text()
    heading = "## Batched serving (`benchmarks/serve_batch.py`, issue #21)\n"
    text = text.replace(heading, heading + entry) if heading in text else text + "\n" + heading + entry
    path.write_text(text)  # newest entry first under the heading


if __name__ == "__main__":
    main()
