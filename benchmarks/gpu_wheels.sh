#!/usr/bin/env bash
# The wheels the GPU machine lacks for benchmarks/gpu_vs_trl.py (it has python 3.12, torch with CUDA,
# transformers, accelerate and peft, and no network): TRL 1.16 and `datasets` with their dependencies,
# for CPython 3.12 on manylinux x86_64, into .whl/ (git-ignored; benchmarks/gpu_run.sh installs them).
#
#   bash benchmarks/gpu_wheels.sh            # run from anywhere; needs the package index
#
# Pins are the versions of the dev venv except where the unknown image forces otherwise:
#   datasets 4.8.5 (not 5.2): 5.x needs huggingface_hub >= 1.31, which a transformers 4.x image cannot
#     take (it pins huggingface_hub < 1.0); 4.8.5 takes 0.25 <= hub < 2 and TRL 1.16 takes >= 4.7.
#   pandas 2.3.3 (not 3.1): 3.x needs numpy >= 2.0.2; 2.3.3 runs on numpy >= 1.26.
#   fsspec 2026.2.0: datasets 4.8.5's upper bound.
#   pyarrow 21.0.0 (not 26): 26 refuses NumPy 1.x at import; 21 (datasets 4.8.5's floor) runs on 1.26 and 2.x.
# pyarrow is cut down (its wheel is 43 MB; the device transfer is 64 MiB with the repo): the Flight
# RPC and S3 libraries, headers, C++ sources, tests and the duplicate unversioned .so copies go, and
# the shared libraries lose their static symbol tables (`strip --strip-unneeded`); nothing
# datasets or TRL import needs them; pandas loses its tests. Not included (the image has them): torch, transformers,
# accelerate, peft, huggingface_hub, tokenizers, safetensors, numpy, pyyaml, tqdm, jinja2, psutil.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
PY=${PYTHON:-python3}
PINS=(
  trl==1.16.0 datasets==4.8.5 pyarrow==21.0.0 pandas==2.3.3
  dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.2.0
  python-dateutil==4.0.0 pytz==2026.6 tzdata==2026.6
  # datasets 4.8 imports both HTTP clients; gpu_run.sh installs these only where the image lacks them
  requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.3 certifi==2026.10.19.post1
  httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 typing_extensions==4.16.0
)
rm -rf "$DEST"
mkdir -p "$DEST"
for pin in "${PINS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$pin" 2>&1 | grep -v "^WARNING: Location" || true
  name=${pin%%==*}
  ls "$DEST" | grep -qi "^${name//-/_}-\|^${name}-" || { echo "missing wheel for $pin" >&2; exit 1; }
done

# Cut pyarrow and pandas down: rewrite each wheel without the members below and with its shared
# libraries stripped, RECORD to match (pip does not check RECORD hashes on install).
"$PY" - "$DEST" <<'EOF'
import glob, re, shutil, subprocess, sys, tempfile, zipfile
from pathlib import Path

DROP = {"pyarrow": re.compile(r"^pyarrow/(include/|includes/|src/|tests/|.*flight.*|libarrow_s3\.so.*|_s3fs\..*\.so|"
                              r"_pyarrow_cpp_tests\..*|libarrow_python(_parquet_encryption)?\.so(\.\d+\.\d+\.\d+)?$|"
                              r".*\.pyx|.*\.pxd)"),
        "pandas": re.compile(r"^pandas/tests/")}


def stripped(data: bytes) -> bytes:
    """The shared library without its static symbol table (the dynamic symbols stay): about 20% smaller."""
    if not shutil.which("strip"):
        return data
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(data)
        f.flush()
        subprocess.run(["strip", "--strip-unneeded", f.name], check=True)
        return Path(f.name).read_bytes()


def cut(src: Path, drop: re.Pattern) -> None:
    tmp = src.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        kept = {i.filename for i in zin.infolist() if not drop.match(i.filename)}
        for info in zin.infolist():
            if info.filename not in kept:
                continue
            data = zin.read(info)
            if re.search(r"\.so(\.\d+)*$", info.filename):
                data = stripped(data)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(ln + "\n" for ln in data.decode().splitlines() if ln.split(",")[0] in kept).encode()
            zout.writestr(info, data, zipfile.ZIP_DEFLATED, 9)
    print(f"{src.name}: cut down by {(src.stat().st_size - tmp.stat().st_size) / 1e6:.1f} MB")
    tmp.replace(src)


for name, drop in DROP.items():
    for path in glob.glob(f"{sys.argv[1]}/{name}-*.whl"):
        cut(Path(path), drop)
EOF
ls -l "$DEST" | awk 'NR > 1 {printf "%8.2f MB  %s\n", $5 / 1e6, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total $(awk "BEGIN {print $total / 1e6}") MB in $DEST"
[ "$total" -lt $((60 * 1024 * 1024)) ] || { echo "over 60 MiB: the device transfer (64 MiB with the repo) fails" >&2; exit 1; }
