"""rlhfkit vs TRL on identical work: SFT tokens/s, RM pairs/s, DPO pairs/s, RLOO and GRPO completions/s.

Same tiny Llama-style model (written once by ``prepare``), same data (512 preference pairs of
varied length; SFT trains on prompt + chosen), same global batch, steps, learning rate, fp32 and
thread count on both sides. TRL runs at its best CPU settings: bf16 off, gradient checkpointing
off, and for DPO the faster of ``precompute_ref_log_probs`` on and off (both are measured).

Each measurement runs in a fresh subprocess (no shared accelerate state, a clean peak-RSS reading),
the two sides alternating, ``--reps`` times; the medians and their ratio are printed as a Markdown
table (paste into benchmarks/RESULTS.md with the machine and the command).

Timed span: from the data (already loaded) to the last optimiser step, with the model already
loaded: rlhfkit's ``summary.json`` ``train_seconds`` (tokenisation and reference pre-computation
included); for TRL, constructing the trainer (its tokenisation, its reference copy) plus
``trainer.train()`` (its reference pre-computation). Throughput counts the same units on both
sides: real (non-padding) tokens of the examples trained for SFT, pairs for RM and DPO, sampled
completions for RLOO and GRPO.

``--shape realistic`` (``benchmarks/shapes.py``): a 32k vocabulary with an untied head, hidden
256, long-tailed prompts and responses (tens to several hundred tokens), the shape of a real
preference fine-tune; the default ``small`` shape is the original ~2k-word, short-sequence one.
Idle-machine protocol: run it on an otherwise idle machine, ``--reps`` >= 3 alternating sides, the
same ``--threads`` on both; each measurement records the 1-minute load average before and after,
and the table reports them with each side's median peak RSS (each side is its own process).

Online settings: ``rloo`` / ``grpo``: 8 prompts of 4-40 words x 4 completions of up to 32 tokens a
step; ``rloo-g8`` / ``grpo-g8``: TRL's default of 8 generations, 4 prompts of 40-80 words (longer
than the responses, as in chat RL) x 8 completions of up to 32 tokens a step. GRPO's beta
(``--grpo-beta``, default 0.04; 0 is TRL's default: no reference model on either side) and RLOO's
(0.05, TRL's default) are the same on both sides. Each measurement records the load average.

    .venv/bin/pip install trl==1.16.0 "torch==2.13.0"     # benchmarks only, not a dependency
    .venv/bin/python benchmarks/vs_trl.py --reps 3 --threads 1 [--baseline-src DIR]
    .venv/bin/python benchmarks/vs_trl.py --shape realistic --stages sft,rm,dpo --reps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402
STAGES = ("sft", "rm", "dpo", "rloo", "grpo", "rloo-g8", "grpo-g8")
UNITS = {"sft": "tokens/s", "rm": "pairs/s", "dpo": "pairs/s", **{s: "completions/s" for s in STAGES[3:]}}

# The benchmark model: Llama-style, ~2.8M parameters with the word vocabulary below.
MODEL = dict(hidden_size=192, num_layers=4, num_heads=4, max_positions=256)
N_PAIRS, BATCH, MAX_LENGTH = 512, 32, 256
RL_PROMPTS, RL_GENERATIONS, RL_NEW_TOKENS = 8, 4, 32
G8_PROMPTS, G8_GENERATIONS = 4, 8  # the -g8 settings: long prompts (prompts_long.jsonl)


@dataclass(frozen=True)
class Setup:
    """What both sides share besides stage, data and steps; the defaults are this CPU benchmark's.

    ``cuda``: both sides on the GPU with bf16 autocast over fp32 weights (rlhfkit ``dtype: bfloat16``,
    TRL ``bf16=True``); otherwise the CPU in fp32. ``benchmarks/gpu_vs_trl.py`` passes its own.
    """

    batch: int = BATCH
    max_length: int = MAX_LENGTH
    rl_prompts: int = RL_PROMPTS
    rl_generations: int = RL_GENERATIONS
    rl_new_tokens: int = RL_NEW_TOKENS
    cuda: bool = False
    rl_prompts_file: str = "prompts"  # the key of the prompt file in ``prepare``'s paths
    grpo_beta: float = 0.04


def setup_of(stage: str, shape: str = "small", grpo_beta: float = 0.04) -> tuple[str, Setup]:
    """(algorithm, Setup) of a CPU benchmark stage on a shape (``shapes.SHAPES``): ``grpo-g8`` is
    GRPO with 8 generations of long prompts."""
    if stage.endswith("-g8"):
        return stage[:-3], Setup(rl_prompts=G8_PROMPTS, rl_generations=G8_GENERATIONS, rl_prompts_file="prompts_long",
                                 grpo_beta=grpo_beta)
    if shape == "small":
        return stage, Setup(grpo_beta=grpo_beta)
    s = shapes.SHAPES[shape]
    return stage, Setup(batch=s.batch, max_length=s.max_length, grpo_beta=grpo_beta)


CPU = Setup()


def reward_len(prompts, completions, **_):
    """A reward function both sides call (TRL signature): prefers ~12-word completions."""
    return [-abs(len(str(c).split()) - 12) / 12.0 for c in completions]


# --------------------------------------------------------------------------- data and model


def make_data(seed: int = 0, n: int = N_PAIRS) -> list[dict]:
    """Preference pairs of varied length: prompts 4-40 words, responses 2-60 words (long tail)."""
    return shapes.small_pairs(seed, n)


def prepare(workdir: Path, shape: str = "small") -> dict:
    """Write the data files and the model folder once (per shape); returns their paths."""
    from rlhfkit.tiny_models import make_tiny_model_dir

    s = shapes.SHAPES[shape]
    workdir = workdir if shape == "small" else workdir / f"{shape}-{s.n_pairs}p-{s.vocab}v"  # a changed shape: new data
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {k: workdir / f"{k}.jsonl" for k in ("pairs", "sft", "prompts", "prompts_long")}
    paths["model"] = workdir / "model"
    if (paths["model"] / "config.json").exists() and paths["prompts_long"].exists():
        return {k: str(v) for k, v in paths.items()}
    pairs = make_data() if shape == "small" else shapes.make_pairs(shapes.SHAPES[shape])
    rng = random.Random(1)
    with open(paths["prompts_long"], "w") as f:  # 40-80 words: longer than the 32-token responses
        f.writelines(json.dumps({"prompt": " ".join(rng.choice(p["prompt"].split() + p["chosen"].split())
                                                    for _ in range(rng.randint(40, 80)))}) + "\n" for p in pairs)
    with open(paths["pairs"], "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    with open(paths["sft"], "w") as f:
        f.writelines(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs)
    with open(paths["prompts"], "w") as f:
        f.writelines(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs)
    texts = [t for p in pairs for t in p.values()]
    if shape == "small":
        make_tiny_model_dir(paths["model"], texts, seed=0, **MODEL)
    else:
        shapes.write_model(shapes.SHAPES[shape], paths["model"], texts, seed=0)
    return {k: str(v) for k, v in paths.items()}


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def real_tokens(paths: dict, stage: str, max_length: int = MAX_LENGTH) -> int:
    """Non-padding tokens of one pass over the data, as rlhfkit tokenises it (the SFT unit)."""
    from rlhfkit.data import load_sft
    from rlhfkit.data.tokenize import tokenize_sft
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(paths["model"])
    rows, _ = tokenize_sft(load_sft(paths["sft"]), tok, max_length)
    return sum(len(r.input_ids) for r in rows)


# --------------------------------------------------------------------------- one side, one stage


def common(stage: str, steps: int, setup: Setup = CPU) -> dict:
    return dict(max_steps=steps, batch_size=setup.batch, learning_rate=1e-5 if stage in ("rloo", "grpo") else 5e-5,
                seed=0, max_length=setup.max_length)


def run_rlhfkit(stage: str, paths: dict, out: Path, steps: int, opts: dict, setup: Setup = CPU) -> float:
    """One rlhfkit run; returns its ``train_seconds`` (the rest of the summary is in ``out/summary.json``)."""
    from rlhfkit.train import dpo, grpo, rloo, rm, sft

    base = dict(model=paths["model"], output_dir=str(out), dtype="bfloat16" if setup.cuda else "float32",
                device="cuda" if setup.cuda else "cpu", lr_scheduler="linear", **common(stage, steps, setup))
    if stage == "sft":
        summary = sft.run_sft(sft.SFTConfig(data=paths["sft"], **base, **opts))
    elif stage == "rm":
        summary = rm.run_rm(rm.RMConfig(data=paths["pairs"], **base, **opts))
    elif stage == "dpo":
        summary = dpo.run_dpo(dpo.DPOConfig(data=paths["pairs"], precompute_ref=True, beta=0.1, **base, **opts))
    else:
        base.update(batch_size=setup.rl_prompts, data=paths[setup.rl_prompts_file], num_generations=setup.rl_generations,
                    max_new_tokens=setup.rl_new_tokens, reward_fn=[f"{Path(__file__).resolve()}:reward_len"],
                    temperature=1.0)
        if stage == "rloo":  # TRL RLOO: KL (beta 0.05) in the reward
            summary = rloo.run_rloo(rloo.RLOOConfig(kl_coef=0.05, kl_in="reward", **base, **opts))
        else:  # TRL GRPO with beta (0.04 by default here): k3 KL as a loss term
            summary = grpo.run_grpo(grpo.GRPOConfig(kl_coef=setup.grpo_beta, kl_in="loss", kl_estimator="k3", **base,
                                                    **opts))
    return float(summary["train_seconds"])


def run_trl(stage: str, paths: dict, out: Path, steps: int, opts: dict, setup: Setup = CPU) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    import trl
    from rlhfkit.models import load_reward_model, load_tokenizer

    tok = load_tokenizer(paths["model"])
    c = common(stage, steps, setup)
    batch, max_length = setup.batch, setup.max_length
    args = dict(output_dir=str(out), max_steps=steps, learning_rate=c["learning_rate"], seed=0, bf16=setup.cuda,
                fp16=False, gradient_checkpointing=False, use_cpu=not setup.cuda, report_to="none", save_strategy="no",
                logging_steps=10_000, disable_tqdm=True, lr_scheduler_type="linear", max_grad_norm=1.0,
                dataloader_num_workers=0)
    torch.manual_seed(0)
    if stage == "rm":
        model = load_reward_model(paths["model"], tok)
    else:
        model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32)
    if stage == "sft":
        data = Dataset.from_list(read_jsonl(paths["sft"]))
        # padding_free without packing refuses a max_length (the data is shorter than it anyway)
        cfg = trl.SFTConfig(per_device_train_batch_size=batch, **{"max_length": max_length, **opts}, **args)
        make = lambda: trl.SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)  # noqa: E731
    elif stage == "rm":
        data = Dataset.from_list(read_jsonl(paths["pairs"]))
        cfg = trl.RewardConfig(per_device_train_batch_size=batch, max_length=max_length, **args, **opts)
        make = lambda: trl.RewardTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)  # noqa: E731
    elif stage == "dpo":
        data = Dataset.from_list(read_jsonl(paths["pairs"]))
        cfg = trl.DPOConfig(per_device_train_batch_size=batch, max_length=max_length, beta=0.1, **args, **opts)
        make = lambda: trl.DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)  # noqa: E731
    else:
        data = Dataset.from_list(read_jsonl(paths[setup.rl_prompts_file]))
        rl = dict(per_device_train_batch_size=setup.rl_prompts * setup.rl_generations,
                  num_generations=setup.rl_generations, max_completion_length=setup.rl_new_tokens, temperature=1.0, **args, **opts)
        if stage == "rloo":
            cfg = trl.RLOOConfig(beta=0.05, **rl)
            make = lambda: trl.RLOOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,  # noqa: E731
                                           reward_funcs=reward_len)
        else:
            cfg = trl.GRPOConfig(beta=setup.grpo_beta, **rl)
            make = lambda: trl.GRPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,  # noqa: E731
                                           reward_funcs=reward_len)
    t0 = time.perf_counter()
    trainer = make()
    trainer.train()
    return time.perf_counter() - t0


def worker(side: str, stage: str, workdir: Path, steps: int, threads: int, opts: dict, shape: str = "small",
           grpo_beta: float = 0.04) -> dict:
    """One measurement in this (fresh) process; returns seconds, units/s and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    paths = prepare(workdir, shape)
    (algo, setup), n_pairs = setup_of(stage, shape, grpo_beta), shapes.SHAPES[shape].n_pairs
    if side != "trl" and shape != "small" and stage in ("rm", "dpo"):
        opts = {"max_prompt_length": setup.max_length, **opts}  # TRL keeps whole prompts up to max_length
    out = workdir / f"out-{side}-{stage}-{os.getpid()}"
    seconds = (run_trl if side == "trl" else run_rlhfkit)(algo, paths, out, steps, opts, setup)
    if stage == "sft":
        units = real_tokens(paths, stage, setup.max_length) * steps * setup.batch / n_pairs
    elif stage in ("rm", "dpo"):
        units = steps * setup.batch
    else:
        units = steps * setup.rl_prompts * setup.rl_generations
    return {"side": side, "stage": stage, "seconds": seconds, "rate": units / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(side: str, stage: str, args, opts: dict | None = None, src: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, stage, "--workdir", str(args.workdir), "--shape", args.shape,
           "--steps", str(args.steps), "--threads", str(args.threads), "--opts", json.dumps(opts or {}),
           "--grpo-beta", str(args.grpo_beta)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    if src is not None:  # an older rlhfkit tree (git archive REV src | tar -x -C DIR) ahead of the installed one
        env["PYTHONPATH"] = str(Path(src).resolve() / "src")
    load_before = os.getloadavg()[0]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        raise SystemExit(f"{side} {stage} failed:\n{res.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shape", choices=sorted(shapes.SHAPES), default="small", help="workload (benchmarks/shapes.py)")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the shape's; small: 16 x 32 = one pass over 512 pairs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides (1 on a shared machine)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-bench"))
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    p.add_argument("--src", type=Path, help="run this rlhfkit tree (a folder holding src/) instead of the installed one")
    p.add_argument("--baseline-src", type=Path, help="also run an older rlhfkit checkout (a folder holding its "
                   "src/) as side 'rlhfkit-base', e.g. from `git archive main src | tar -x -C DIR`")
    p.add_argument("--grpo-beta", type=float, default=0.04, help="GRPO's KL coefficient, both sides (TRL's default: 0)")
    p.add_argument("--trl-variants", default="", help="comma-separated TRL settings to run (default: every one the stage "
                   "has: trl, trl-precompute, trl-padding-free, trl-precompute-padding-free); the table's TRL figure "
                   "is the fastest of those run, so name the ones a single run showed fastest")
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "STAGE"), help=argparse.SUPPRESS)
    p.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or shapes.SHAPES[args.shape].steps
    if args.worker:
        print(json.dumps(worker(*args.worker, args.workdir, args.steps, args.threads, json.loads(args.opts), args.shape,
                                args.grpo_beta)))
        return
    variants = {"trl": {}, "trl-precompute": {"precompute_ref_log_probs": True}}
    padding_free = {"trl-padding-free": {"padding_free": True},  # TRL's own packing (SFT: max_length None)
                    "trl-precompute-padding-free": {"precompute_ref_log_probs": True, "padding_free": True}}
    variants.update(padding_free if args.shape != "small" else {})
    keep = set(args.trl_variants.split(",")) if args.trl_variants else set(variants)
    if keep - set(variants):
        sys.exit(f"--trl-variants: unknown {sorted(keep - set(variants))}; known at this shape: {sorted(variants)}")
    prepare(args.workdir, args.shape)
    raw: list[dict] = []
    rows = []
    for stage in args.stages.split(","):
        sides = (["rlhfkit", "trl"] + (["trl-precompute"] if stage == "dpo" else [])
                 + [v for v in padding_free if args.shape != "small" and (stage == "dpo" or "precompute" not in v)
                    and stage in ("sft", "dpo")]
                 + (["rlhfkit-base"] if args.baseline_src else []))
        sides = [s for s in sides if not s.startswith("trl") or s in keep]
        if not any(s.startswith("trl") for s in sides):
            sys.exit(f"--trl-variants {args.trl_variants}: none of them applies to stage {stage}")
        got: dict[str, list[dict]] = {s: [] for s in sides}
        for rep in range(args.reps):
            for side in [s for s in (sides if rep % 2 == 0 else sides[::-1]) if s in got]:
                try:
                    r = spawn("trl" if side.startswith("trl") else "rlhfkit", stage, args, variants.get(side),
                              args.baseline_src if side == "rlhfkit-base" else args.src)
                except SystemExit as e:  # an optional TRL setting this TRL or device cannot run: drop it
                    if side in ("rlhfkit", "trl", "rlhfkit-base"):
                        raise
                    print(f"  {stage} {side}: dropped ({str(e).strip().splitlines()[-1][:200]})", flush=True)
                    del got[side]
                    continue
                r["variant"] = side
                got[side].append(r)
                raw.append(r)
                print(f"  {stage} {side:15s} {r['seconds']:7.2f} s  {r['rate']:9.1f} {UNITS[stage]}  "
                      f"rss {r['peak_rss_mib']:.0f} MiB  load {r['load_before']:.2f}->{r['load_after']:.2f}", flush=True)
        med = {s: statistics.median(x["rate"] for x in got[s]) for s in got}
        best_trl = max((s for s in got if s.startswith("trl")), key=med.get)
        base = f"{med['rlhfkit-base']:.1f} ({med['rlhfkit'] / med['rlhfkit-base']:.2f}x)" if args.baseline_src else "-"
        rss = {s: statistics.median(x["peak_rss_mib"] for x in got[s]) for s in ("rlhfkit", best_trl)}
        loads = [x[k] for x in raw if x["stage"] == stage for k in ("load_before", "load_after")]
        rows.append((stage, med["rlhfkit"], med[best_trl], best_trl, med["rlhfkit"] / med[best_trl],
                     statistics.median(x["seconds"] for x in got["rlhfkit"]),
                     statistics.median(x["seconds"] for x in got[best_trl]), base,
                     f"{rss['rlhfkit']:.0f} / {rss[best_trl]:.0f}", f"{min(loads):.2f}-{max(loads):.2f}"))
    print(f"\nshape {args.shape}, {args.steps} steps, {args.reps} reps, threads {args.threads}, cores {os.cpu_count()}")
    print("| stage | unit | rlhfkit | TRL (best setting) | ratio | rlhfkit s | TRL s | peak RSS MiB rlhfkit / TRL "
          "| load avg | rlhfkit before (speed-up) |\n|---|---|---|---|---|---|---|---|---|---|")
    for stage, a, b, which, ratio, sa, sb, base, rss, load in rows:
        print(f"| {stage} | {UNITS[stage]} | {a:.1f} | {b:.1f} ({which}) | **{ratio:.2f}x** | {sa:.1f} | {sb:.1f} | {rss} "
              f"| {load} | {base} |")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
