#!/usr/bin/env bash
# `pip install rlhfkit` with no extras, in a fresh virtual environment: the four trainers' --help, a
# tiny SFT run, and `rlhfkit annotate serve` / `rlhfkit serve` giving the one-line extra hint.
# Downloads from the package index (torch's CPU build and the core dependencies): run by hand, not
# part of `make test`.   Usage: tests/extras_fresh_venv.sh [WORK_DIR]   (default: a new temp folder)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
mkdir -p "$WORK"
cd "$WORK"
echo "== fresh venv in $WORK"
"$PY" -m venv venv
PIP="venv/bin/python -m pip install -q --no-compile"
# torch first, pinned as the Makefile pins it (a bare `torch` requirement can pull a multi-GB CUDA build)
$PIP "$TORCH_SPEC"
# a copy of the source: pip builds in the tree and must not leave build/ in the repository
rm -rf src-copy && mkdir src-copy
(cd "$REPO" && git ls-files -z | xargs -0 tar cf - ) | tar xf - -C src-copy
$PIP ./src-copy "$TORCH_SPEC"
echo "== installed web/openai modules (none expected):"
for m in fastapi uvicorn sqlalchemy alembic psycopg argon2 openai krippendorff markdown; do
  venv/bin/python -c "import $m" 2>/dev/null && echo "  $m IS INSTALLED" || true
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
R=venv/bin/rlhfkit
for stage in sft dpo grpo rm; do
  $R $stage --help > help_$stage.txt
  echo "== rlhfkit $stage --help: exit 0, $(wc -l < help_$stage.txt) lines"
done
echo "== tiny world and model, then a 4-step rlhfkit sft"
venv/bin/python - <<'PY'
from rlhfkit.world import toy
from rlhfkit.tiny_models import make_tiny_model_dir
toy.write_dataset("world", seed=0)
make_tiny_model_dir("base", toy.vocabulary_texts(), seed=0, hidden_size=64)
PY
$R sft --model base --data world/sft.jsonl --output_dir sft --max_steps 4 --batch_size 4 --max_length 32 > sft.log 2>&1
echo "   sft: exit 0, wrote $(ls sft | tr '\n' ' ')"
expect_hint() {  # command... : exit 2 and one stderr line naming the extra
  set +e
  "$@" 2> err.txt > /dev/null
  rc=$?
  set -e
  echo "== $*: exit $rc, $(wc -l < err.txt) stderr line(s):"
  sed 's/^/   /' err.txt
  [ "$rc" = 2 ] && [ "$(wc -l < err.txt)" = 1 ] && grep -q "pip install 'rlhfkit\[" err.txt
}
expect_hint $R annotate serve --db annotate.db
expect_hint $R serve --model sft
echo "== all checks passed"
