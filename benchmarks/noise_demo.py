"""`rlhfkit noise` on the demo world with injected label flips: precision and recall of the flags.

1. The demo's own stages up to the sampled pairs (base, data, SFT, pairs; `rlhfkit/configs/demo.yaml`)
   run as a pipeline under --output_dir (cached stages are skipped on a rerun).
2. `--pairs` pairs are labelled by the world's gold preference (pairs the gold score ties are
   dropped), then a seeded `--flip` share of them is flipped; `flipped: true` marks those.
3. `rlhfkit noise` (k-fold reward models from the SFT model) flags suspicious pairs; its summary
   has precision and recall against the `flipped` column. The figure is copied to docs/.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/noise_demo.py --output_dir runs/noise_demo
"""

import argparse
import json
import platform
import random
import shutil
import time
from pathlib import Path

import yaml

from rlhfkit.cli import main as cli
from rlhfkit.pipeline import run_pipeline
from rlhfkit.demo import builtin_config
from rlhfkit.world.gold import gold_score
from rlhfkit.world.tasks import Prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output_dir", default="runs/noise_demo")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--figure", default="docs/noise_finder.png")
    args = ap.parse_args()
    root = Path(args.output_dir)
    spec = yaml.safe_load(open(builtin_config()))
    spec["stages"] = [s for s in spec["stages"] if s["name"] in ("base", "data", "sft", "pairs")]
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    run_pipeline(root / "pipeline.yaml", str(root))
    t_pipeline = time.perf_counter() - t0

    rows = [json.loads(x) for x in (root / "pairs" / "pairs.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    rng.shuffle(rows)
    labelled = []
    for r in rows:
        p = Prompt(r["prompt"], r["category"], r.get("subject", ""), r.get("answer", ""))
        ga, gb = gold_score(p, r["response_a"]), gold_score(p, r["response_b"])
        if ga != gb and r["response_a"] != r["response_b"]:
            good, bad = (r["response_a"], r["response_b"]) if ga > gb else (r["response_b"], r["response_a"])
            flip = rng.random() < args.flip
            labelled.append({"prompt": r["prompt"], "chosen": bad if flip else good, "rejected": good if flip else bad,
                             "category": r["category"], "flipped": flip})
        if len(labelled) == args.pairs:
            break
    data = root / "labels_flipped.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in labelled))
    t1 = time.perf_counter()
    code = cli(["noise", "--data", str(data), "--model", str(root / "sft"), "--output_dir", str(root / "noise"),
                "--truth_field", "flipped", "--folds", str(args.folds), "--epochs", str(args.epochs),
                "--batch_size", "32", "--learning_rate", "1e-3", "--warmup_ratio", "0.1", "--max_length", "64",
                "--max_prompt_length", "24"])
    if code:
        raise SystemExit(code)
    t_noise = time.perf_counter() - t1
    summary = json.loads((root / "noise" / "summary.json").read_text())
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "noise" / "noise.png", args.figure)
    print(json.dumps({"pairs": len(labelled), "injected_flips": sum(x["flipped"] for x in labelled),
                      **{k: summary[k] for k in ("flagged", "precision", "recall", "f1", "out_of_fold_accuracy_vs_labels")},
                      "pipeline_seconds": round(t_pipeline, 1), "noise_seconds": round(t_noise, 1),
                      "machine": platform.machine(), "figure": args.figure}, indent=2))


if __name__ == "__main__":
    main()
