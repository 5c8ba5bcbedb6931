"""Time `rlhfkit demo` from nothing: an empty model cache (so the base model is pretrained too) and
an empty output folder, as on a fresh clone. Prints the wall time and the demo's headline figures.

    .venv/bin/python benchmarks/demo_time.py [--output_dir DIR]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output_dir", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-demo-bench-"))
    out = Path(args.output_dir) if args.output_dir else work / "demo"
    env = {**os.environ, "RLHFKIT_CACHE": str(work / "cache")}  # empty cache: the base model is built
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--output_dir", str(out)], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in out.glob("*/.rlhfkit-stage.json")}
    print(json.dumps({"wall_seconds": round(seconds, 1), "cores": os.cpu_count(), "cpu": cpu_model(),
                      "stage_seconds": stages, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
