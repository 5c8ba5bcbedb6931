"""Peak memory of DPO and PPO on a model large enough that weights dominate (~66M parameters).

Each run is a fresh subprocess (peak RSS from getrusage), a few optimiser steps, fp32, CPU:

- DPO: rlhfkit (``precompute_ref``: the reference log-probs come from the policy before its first
  step, so no second copy is ever loaded) vs TRL 1.16 (``precompute_ref_log_probs`` on and off).
- PPO: rlhfkit only (TRL 1.x has no PPO trainer): policy, reference, reward model and critic.
- LoRA (``--only lora``): rlhfkit full fine-tuning vs LoRA r=16 (every linear layer) for DPO (with
  and without ``precompute_ref``) and PPO. With LoRA the reference is the policy with its adapter
  switched off, and the critic is a LoRA critic on its own frozen backbone.

Next to each measured peak, the bytes accounted from N (parameters): weights 4N per resident model,
gradients 4N and AdamW state 8N per trained parameter (all of a model, or a LoRA adapter's); the
rest of the peak (over the process's baseline after imports) is activations, logits and allocator
slack.

    .venv/bin/python benchmarks/memory.py --reps 1              # rlhfkit vs TRL (needs .[bench])
    .venv/bin/python benchmarks/memory.py --reps 1 --only lora  # full vs LoRA, rlhfkit only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402

BIG = dict(hidden_size=640, num_layers=10, num_heads=10, max_positions=256)
STEPS, BATCH, PAIRS = 3, 8, 24
LORA_R = 16


def prepare(workdir: Path) -> dict:
    from rlhfkit.tiny_models import make_tiny_model_dir

    paths = vs_trl.prepare(workdir)  # data files; the first PAIRS records are used here
    big = workdir / "model-66m"
    small = {k: workdir / f"mem-{k}.jsonl" for k in ("pairs", "sft", "prompts")}
    if not (big / "config.json").exists():
        texts = [t for p in vs_trl.read_jsonl(paths["pairs"]) for t in p.values()]
        make_tiny_model_dir(big, texts, seed=0, **BIG)
        for k, path in small.items():
            path.write_text("".join(json.dumps(r) + "\n" for r in vs_trl.read_jsonl(paths[k])[:PAIRS]))
    return {**{k: str(v) for k, v in small.items()}, "model": str(big)}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(side: str, stage: str, workdir: Path, opts: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    paths = prepare(workdir)
    import transformers  # noqa: F401  (imports counted in the baseline, not the run)

    import rlhfkit.train.dpo  # noqa: F401
    base = rss_mib()
    vs_trl.BATCH = BATCH
    out = workdir / f"mem-{side}-{stage}-{os.getpid()}"
    if side == "rlhfkit" and stage == "dpo":  # as vs_trl.run_rlhfkit, but opts may turn precompute_ref off
        from rlhfkit.train.dpo import DPOConfig, run_dpo

        run_dpo(DPOConfig(**{"model": paths["model"], "data": paths["pairs"], "output_dir": str(out), "dtype": "float32",
                             "device": "cpu", "lr_scheduler": "linear", "precompute_ref": True, "beta": 0.1,
                             **vs_trl.common("dpo", STEPS), **opts}))
    elif stage == "ppo":
        from rlhfkit.train.ppo import PPOConfig, run_ppo

        run_ppo(PPOConfig(model=paths["model"], reward_model=paths["model"], data=paths["prompts"],
                          output_dir=str(out), max_steps=STEPS, batch_size=BATCH, num_generations=1,
                          max_new_tokens=16, ppo_epochs=1, dtype="float32", device="cpu", **opts))
    else:
        (vs_trl.run_trl if side == "trl" else vs_trl.run_rlhfkit)(stage, paths, out, STEPS, opts)
    return {"side": side, "stage": stage, "opts": opts, "baseline_mib": base, "peak_mib": rss_mib()}


def accounted(n: int, resident: float, trained: float) -> dict:
    """MiB from N: ``resident`` and ``trained`` count models' worth of parameters (fractions for adapters)."""
    mib = 1 / 2 ** 20
    return {"weights": 4 * n * resident * mib, "gradients": 4 * n * trained * mib, "adam": 8 * n * trained * mib}


def run_list(only: str, n: int) -> list:
    """(side, stage, opts, resident models, trained models) per run."""
    if only != "lora":
        return [("rlhfkit", "dpo", {}, 1, 1), ("trl", "dpo", {"precompute_ref_log_probs": True}, 1, 1),
                ("trl", "dpo", {}, 2, 1), ("rlhfkit", "ppo", {}, 4, 2)]
    from rlhfkit.memory_plan import Shape, lora_params

    h, layers = BIG["hidden_size"], BIG["num_layers"]
    a = lora_params(Shape(n, h, layers, 4 * h, h), LORA_R) / n  # adapter size as a fraction of a model
    lora = {"lora_r": LORA_R, "lora_alpha": 2 * LORA_R}
    # LoRA PPO holds policy (+ adapter), reward model, critic backbone (+ adapter); no reference copy
    return [("rlhfkit", "dpo", {}, 1, 1), ("rlhfkit", "dpo", {"precompute_ref": False}, 2, 1),
            ("rlhfkit", "dpo", lora, 1 + a, a), ("rlhfkit", "ppo", {}, 4, 2), ("rlhfkit", "ppo", lora, 3 + 2 * a, 2 * a)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-bench"))
    p.add_argument("--only", choices=["lora"], help="lora: rlhfkit full fine-tuning vs LoRA, DPO and PPO (no TRL)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.workdir, json.loads(args.opts))))
        return
    paths = prepare(args.workdir)
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        n = sum(q.numel() for q in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(paths["model"])).parameters())
    runs = run_list(args.only, n)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    print(f"N = {n:,} parameters ({4 * n / 2 ** 20:.0f} MiB fp32); {STEPS} steps, batch {BATCH}\n")
    print("| run | peak RSS MiB | over baseline | weights | grads | AdamW | rest (activations, slack) |\n"
          "|---|---|---|---|---|---|---|")
    for side, stage, opts, resident, trained in runs:
        got = []
        for _ in range(args.reps):
            res = subprocess.run([sys.executable, __file__, "--worker", side, stage, "--workdir", str(args.workdir),
                                  "--opts", json.dumps(opts)], capture_output=True, text=True, env=env)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not lines:
                raise SystemExit(f"{side} {stage} failed:\n{res.stderr[-3000:]}")
            got.append(json.loads(lines[-1]))
        peak = statistics.median(g["peak_mib"] for g in got)
        over = peak - statistics.median(g["baseline_mib"] for g in got)
        acc = accounted(n, resident, trained)
        name = f"{side} {stage}" + (f" {opts}" if opts else "")
        print(f"| {name} | {peak:.0f} | {over:.0f} | {acc['weights']:.0f} ({resident:.3g} models) | {acc['gradients']:.0f} | "
              f"{acc['adam']:.0f} | {over - sum(acc.values()):.0f} |", flush=True)


if __name__ == "__main__":
    main()
