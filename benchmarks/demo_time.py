"""Time `make demo` on a fresh clone: `git clone` of this checkout into a temporary folder, then
`make setup` (creates .venv and installs rlhfkit) and `make demo` with an empty model cache (so
the base model is pretrained too). Prints both times, the total, per-stage seconds and the demo's
headline figures. Run it on an otherwise idle machine.

    python3 benchmarks/demo_time.py                 # fresh clone: setup + demo
    python3 benchmarks/demo_time.py --no-clone      # this checkout's .venv: demo only
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-clone", action="store_true", help="Time `rlhfkit demo` with this checkout's .venv only.")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-demo-bench-"))
    env = {**os.environ, "RLHFKIT_CACHE": str(work / "cache")}  # empty cache: the base model is built
    env.pop("VIRTUAL_ENV", None)
    times = {}
    if args.no_clone:
        root, out = repo, work / "demo"
        times["demo_seconds"] = _timed([str(repo / ".venv/bin/rlhfkit"), "demo", "--output_dir", str(out)], repo, env)
    else:
        root = work / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(root)], check=True)
        out = root / "runs" / "demo"
        times["setup_seconds"] = _timed(["make", "setup"], root, env)
        times["demo_seconds"] = _timed(["make", "demo"], root, env)
    times = {k: round(v, 1) for k, v in times.items()}
    summary = json.loads((out / "summary.json").read_text())
    stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in out.glob("*/.rlhfkit-stage.json")}
    print(json.dumps({**times, "total_seconds": round(sum(times.values()), 1), "cores": os.cpu_count(),
                      "cpu": cpu_model(), "stage_seconds": stages, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
