#!/usr/bin/env bash
# The one command for the GPU machine (run from the repository root, .whl/ filled by
# benchmarks/gpu_wheels.sh and carried along): installs the wheels the image lacks into $GPU_SITE
# (only those missing there or older than ours), puts them and src/ (this checkout's rlhfkit) on
# PYTHONPATH, prints nvidia-smi and the versions, then runs benchmarks/gpu_vs_trl.py under a 540 s
# limit. Everything it prints goes to $OUT/log.txt too; results.json/results.md land in $OUT.
#
#   OUT=/tmp/x bash benchmarks/gpu_run.sh                       # the real run
#   OUT=/tmp/x GPU_BENCH_ARGS=--tiny bash benchmarks/gpu_run.sh # smoke run (CPU, fp32)
#
# PYTHON picks the interpreter (default python3); GPU_BENCH_TIMEOUT the limit in seconds;
# GPU_BENCH_SCRIPT another benchmark taking --out (benchmarks/checkpointing.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-bench-out}
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
mkdir -p "$OUT"

install_wheels() {
  # a wheel is installed when its distribution is missing from the image or older than the wheel
  "$PY" - .whl "$SITE" <<'EOF'
import glob, os, subprocess, sys, sysconfig, zipfile
from importlib import metadata
from pathlib import Path

wheels, site = sorted(glob.glob(f"{sys.argv[1]}/*.whl")), Path(sys.argv[2])
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
if not wheels:
    sys.exit("no wheels in .whl/: run benchmarks/gpu_wheels.sh first")
if tag != "cp312":
    print(f"python is {tag}, the wheels are for cp312: not installing them (this interpreter must have trl already)")
    sys.exit(0)
try:
    from packaging.version import Version
except ImportError:
    Version = None
pick = []
for w in wheels:
    name, version = Path(w).name.split("-")[:2]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    newer = have is None or (Version is not None and Version(have) < Version(version))
    print(f"  {name:20s} ours {version:22s} image {have or '-':22s} -> {'install' if newer else 'keep image'}")
    if newer:
        pick.append(w)
site.mkdir(parents=True, exist_ok=True)
pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                      "--disable-pip-version-check", "--target", str(site), *pick])
if pip.returncode:  # no pip in the image: a wheel without scripts or data is a zip to unpack
    print("pip install failed; unpacking the wheels instead")
    for w in pick:
        zipfile.ZipFile(w).extractall(site)
EOF
}

versions() {
  "$PY" - <<'EOF'
from importlib import metadata
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("transformers", "accelerate", "peft", "trl", "datasets", "pyarrow", "pandas", "numpy",
             "huggingface_hub", "tokenizers"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING")
import trl, rlhfkit  # noqa: E401  fails here, before the benchmark, when the stack does not import
print("trl from", trl.__file__, "rlhfkit from", rlhfkit.__file__)
try:  # TRL 1.16's own floors: the image's versions are unknown
    from packaging.version import Version
    for name, floor in (("transformers", "4.56.2"), ("accelerate", "1.10.1")):
        if Version(metadata.version(name)) < Version(floor):
            print(f"WARNING: {name} {metadata.version(name)} is older than TRL 1.16 needs ({floor})")
except ImportError:
    pass
EOF
}

main() {
  echo "== gpu_run.sh $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, OUT=$OUT"
  nvidia-smi || echo "(no nvidia-smi)"
  echo "== installing .whl into $SITE"
  install_wheels || return 1
  export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  echo "== versions (PYTHONPATH=$PYTHONPATH)"
  versions || return 1
  local script=${GPU_BENCH_SCRIPT:-benchmarks/gpu_vs_trl.py}
  echo "== $script --out $OUT ${GPU_BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # GPU_BENCH_ARGS holds several flags
  timeout -k 10 "${GPU_BENCH_TIMEOUT:-540}" "$PY" "$script" --out "$OUT" ${GPU_BENCH_ARGS:-}
  local rc=$?
  [ "$rc" = 124 ] && echo "TIMED OUT after ${GPU_BENCH_TIMEOUT:-540} s: $OUT/results.json holds the rows done"
  echo "== exit $rc"
  return "$rc"
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
