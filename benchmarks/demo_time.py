"""Time `make demo` on a fresh clone: `git clone` of this checkout into a temporary folder, then
`make setup` (creates .venv and installs rlhfkit) and `make demo` with an empty model cache (so
the base model is pretrained too). Prints both times, the total, per-stage seconds and the demo's
headline figures. Run it on an otherwise idle machine.

    python3 benchmarks/demo_time.py                 # fresh clone: setup + demo
    python3 benchmarks/demo_time.py --no-clone      # this checkout's .venv: demo only
    python3 benchmarks/demo_time.py --no-clone --threads 1 --seed 1 --cache ~/.cache/rlhfkit

``--seed N`` runs the demo with training seed N: a copy of the built-in pipeline whose stages all
get seed N except the world itself (base model, prompts) and the gold evaluation's sampling,
which stay at seed 0, so every seed is judged on the same held-out prompts against the same SFT
samples' seed. ``--threads T`` sets OMP_NUM_THREADS (the demo's figures depend on the thread
count: float sums in another order). ``--cache`` reuses a model cache instead of an empty one
(the base model is then not rebuilt and not timed).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def seeded_pipeline(source: Path, seed: int, dest: Path) -> Path:
    """A copy of the pipeline at ``source`` with training seed ``seed`` (see the module docstring)."""
    import yaml

    spec = yaml.safe_load(source.read_text())
    spec["defaults"] = {**(spec.get("defaults") or {}), "seed": seed}
    fixed = {"world-base", "world-data", "gold-eval"}
    for st in spec["stages"] + (spec.get("round") or {}).get("stages", []):
        if st["stage"] in fixed:
            st["with"] = {**(st.get("with") or {}), "seed": 0}
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-clone", action="store_true", help="Time `rlhfkit demo` with this checkout's .venv only.")
    ap.add_argument("--seed", type=int, default=None, help="Training seed (default: the pipeline's own, 0).")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the demo (default: unset).")
    ap.add_argument("--cache", default="", help="Model cache to reuse (default: a new, empty one).")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-demo-bench-"))
    env = {**os.environ, "RLHFKIT_CACHE": str(Path(args.cache).expanduser() if args.cache else work / "cache")}
    env.pop("VIRTUAL_ENV", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    times = {}
    root = repo if args.no_clone else work / "clone"
    if not args.no_clone:
        subprocess.run(["git", "clone", "-q", str(repo), str(root)], check=True)
        times["setup_seconds"] = _timed(["make", "setup"], root, env)
    out = work / "demo"
    cmd = [str(root / ".venv/bin/rlhfkit"), "demo", "--output_dir", str(out)]
    if args.seed is not None:
        cmd += ["--pipeline", str(seeded_pipeline(root / "src/rlhfkit/configs/demo.yaml", args.seed, work / "demo.yaml"))]
    times["demo_seconds"] = _timed(cmd, root, env)
    times = {k: round(v, 1) for k, v in times.items()}
    summary = json.loads((out / "summary.json").read_text())
    stages = {str(p.parent.relative_to(out)): json.loads(p.read_text())["seconds"]
              for p in sorted(out.glob("**/.rlhfkit-stage.json"))}
    print(json.dumps({**times, "total_seconds": round(sum(times.values()), 1), "cores": os.cpu_count(),
                      "cpu": cpu_model(), "threads": args.threads, "seed": args.seed, "output_dir": str(out),
                      "stage_seconds": stages, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
