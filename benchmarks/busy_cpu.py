"""`rlhfkit demo` stage by stage on an idle machine and beside one competing busy process.

The thread policy (``resources.set_cpu_threads``) picks one thread per free core at each stage's
start; this script checks the acceptance line of issue #21: with one busy process
(``python -c 'while True: pass'``) on a 2-core machine every demo stage takes at most 2x its
idle time. Each run gets an empty model cache (the base model is pretrained in both) and a fresh
output folder; the load average is recorded before and after each run. ``OMP_NUM_THREADS`` is
removed from the demo's environment (the policy decides) unless ``--omp N`` fixes it, e.g.
``--omp 2`` to see the old behaviour.

    python3 benchmarks/busy_cpu.py                    # ~4.5 min idle + ~5-9 min busy on 2 cores
    python3 benchmarks/busy_cpu.py --pipeline FILE    # a smaller pipeline YAML (a quick check)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from demo_time import cpu_model  # noqa: E402

BUSY = "while True: pass"


def run_demo(rlhfkit: str, work: Path, tag: str, pipeline: str | None, omp: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(RLHFKIT_CACHE=str(work / f"cache-{tag}"), TOKENIZERS_PARALLELISM="false")
    if omp:
        env["OMP_NUM_THREADS"] = str(omp)
    out = work / f"demo-{tag}"
    cmd = [rlhfkit, "demo", "--output_dir", str(out)] + (["--pipeline", pipeline] if pipeline else [])
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{tag}: {' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    markers = sorted(out.glob("*/.rlhfkit-stage.json"), key=lambda p: p.stat().st_mtime)  # pipeline order
    stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in markers}
    threads = [ln.split("] ", 1)[-1] for ln in (proc.stdout + proc.stderr).splitlines() if "threads:" in ln]
    return {"seconds": round(seconds, 1), "stage_seconds": stages, "threads": threads,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rlhfkit", default=str(HERE.parent / ".venv/bin/rlhfkit"), help="the rlhfkit command to run")
    ap.add_argument("--pipeline", help="pipeline YAML instead of the built-in demo")
    ap.add_argument("--omp", type=int, help="fix OMP_NUM_THREADS for both runs (default: the thread policy decides)")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-busy-"))
    idle = run_demo(args.rlhfkit, work, "idle", args.pipeline, args.omp)
    hog = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(2.0)  # let it take its core before the demo samples the load
        busy = run_demo(args.rlhfkit, work, "busy", args.pipeline, args.omp)
    finally:
        hog.terminate()
        hog.wait(timeout=10)
    rows = []
    for name, s_idle in idle["stage_seconds"].items():
        s_busy = busy["stage_seconds"].get(name)
        if s_busy is not None:
            rows.append((name, s_idle, s_busy, s_busy / max(s_idle, 1e-9)))
    print(f"cores {os.cpu_count()}, {cpu_model()}, OMP_NUM_THREADS {args.omp or 'unset (policy)'}")
    for tag, r in (("idle", idle), ("busy", busy)):
        print(f"{tag}: {r['seconds']} s, load {r['load_before']:.2f} -> {r['load_after']:.2f}; "
              f"{'; '.join(r['threads']) or 'no thread lines'}")
    print("\n| stage | idle s | one busy process s | ratio | <= 2x |\n|---|---|---|---|---|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {ratio:.2f}x | {'yes' if ratio <= 2 else '**no**'} |")
    print(f"| total | {idle['seconds']:.1f} | {busy['seconds']:.1f} | {busy['seconds'] / idle['seconds']:.2f}x | "
          f"{'yes' if busy['seconds'] <= 2 * idle['seconds'] else '**no**'} |")
    if args.json:
        args.json.write_text(json.dumps({"idle": idle, "busy": busy}, indent=1))


if __name__ == "__main__":
    main()
