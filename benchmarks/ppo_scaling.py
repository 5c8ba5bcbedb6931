"""PPO step time split (generation / reward scoring / reference / critic / training) at several
model sizes and response lengths, and the training phase's share of the dense forward+backward rate.

Each (size, length) runs rlhfkit PPO for a few steps in a fresh subprocess (1 thread) on the
vs_trl.py prompts, with the policy itself as reward model and critic initialisation; the figures
are medians over steps 2.. (step 1 warms up). Training FLOPs: ppo_epochs x 6 x (N_policy +
N_critic) per token of prompt + response; the dense rate is roofline.py's, measured on the same
model in the same process.

    .venv/bin/python benchmarks/ppo_scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402

SIZES = {"small": dict(hidden_size=96, num_layers=2, num_heads=4), "base": dict(hidden_size=192, num_layers=4, num_heads=4),
         "large": dict(hidden_size=320, num_layers=5, num_heads=5)}
PHASES = ("time_generation", "time_scoring", "time_reference", "time_values", "time_training")


def worker(size: str, new_tokens: int, workdir: Path, steps: int) -> dict:
    import torch

    import roofline
    from rlhfkit.data.tokenize import prompt_ids
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.tiny_models import make_tiny_model_dir
    from rlhfkit.train.ppo import PPOConfig, run_ppo

    torch.set_num_threads(1)
    paths = vs_trl.prepare(workdir)
    model_dir = workdir / f"ppo-model-{size}"
    if not (model_dir / "config.json").exists():
        texts = [t for p in vs_trl.read_jsonl(paths["pairs"]) for t in p.values()]
        make_tiny_model_dir(model_dir, texts, seed=0, max_positions=256, **SIZES[size])
    out = workdir / f"ppo-{size}-{new_tokens}-{os.getpid()}"
    cfg = PPOConfig(model=str(model_dir), reward_model=str(model_dir), data=paths["prompts"], output_dir=str(out),
                      max_steps=steps, batch_size=16, num_generations=1, max_new_tokens=new_tokens, ppo_epochs=2,
                      mini_batch_size=8, dtype="float32", device="cpu")
    run_ppo(cfg)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")][1:]
    med = {k: statistics.median(r[k] for r in rows) for k in PHASES + ("response_length",)}
    model = load_causal_lm(str(model_dir))
    n = sum(p.numel() for p in model.parameters())
    tok = load_tokenizer(str(model_dir))
    prompts = vs_trl.read_jsonl(paths["prompts"])[:64]
    prompt_len = statistics.mean(len(prompt_ids(tok, p["prompt"])) for p in prompts)
    tokens = cfg.batch_size * (prompt_len + med["response_length"])
    train_flops = cfg.ppo_epochs * 6 * 2 * n * tokens  # policy + critic of the same size
    dense = roofline.dense_rate(model, n, 16, int(prompt_len + new_tokens), 3)
    return {"size": size, "params": n, "new_tokens": new_tokens, **med, "step": sum(med[k] for k in PHASES),
            "train_fraction_of_dense": train_flops / med["time_training"] / dense}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--lengths", default="16,32,64")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-bench"))
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.workdir, args.steps)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
               PYTHONWARNINGS="ignore")
    print("| model | new tokens | generation s | scoring s | reference s | critic s | training s | step s | "
          "training / dense |\n|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for length in args.lengths.split(","):
            res = subprocess.run([sys.executable, __file__, "--worker", size, length, "--workdir", str(args.workdir),
                                  "--steps", str(args.steps)], capture_output=True, text=True, env=env)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not lines:
                raise SystemExit(f"{size} {length} failed:\n{res.stderr[-3000:]}")
            r = json.loads(lines[-1])
            print(f"| {size} ({r['params'] / 1e6:.1f}M) | {length} | {r['time_generation']:.2f} | {r['time_scoring']:.2f} | "
                  f"{r['time_reference']:.2f} | {r['time_values']:.2f} | {r['time_training']:.2f} | {r['step']:.2f} | "
                  f"{r['train_fraction_of_dense']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
