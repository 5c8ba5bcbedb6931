"""``rlhfkit demo``: the whole offline loop on the built-in world, on a laptop CPU in minutes.

base model -> SFT on mixed demonstrations -> reward model on preference pairs -> DPO from the
SFT model -> compare SFT and DPO samples on the world's prompts against the gold preference.
Each stage is the same recipe a user runs with ``rlhfkit sft|rm|dpo --config``; the demo only
writes the data and the configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DPOConfig, RMConfig, SFTConfig, dump_config
from ..models import load_causal_lm, load_tokenizer, make_tiny_model_dir
from . import toy


@dataclass
class DemoConfig:
    """Run SFT -> reward model -> DPO on the built-in world and report what changed."""

    output_dir: str = field(default="runs/demo", metadata={"help": "Where data, stage folders and summary.json go."})
    seed: int = field(default=0, metadata={"help": "Seed for the world, the models and sampling."})
    sft_steps: int = field(default=300, metadata={"help": "SFT optimiser steps."})
    rm_steps: int = field(default=60, metadata={"help": "Reward-model optimiser steps."})
    dpo_steps: int = field(default=80, metadata={"help": "DPO optimiser steps."})
    samples_per_prompt: int = field(default=10, metadata={"help": "Samples per world prompt when comparing SFT and DPO."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda."})


def stage_configs(cfg: DemoConfig, data: dict, out: Path) -> tuple[SFTConfig, RMConfig, DPOConfig]:
    common = dict(seed=cfg.seed, device=cfg.device, max_length=32, max_prompt_length=16, batch_size=32,
                  warmup_ratio=0.1, logging_steps=5)
    sft = SFTConfig(model=str(out / "base"), data=data["sft"], output_dir=str(out / "sft"),
                    max_steps=cfg.sft_steps, learning_rate=2e-3, **common)
    rm = RMConfig(model=str(out / "sft"), data=data["prefs"], eval_data=data["prefs_eval"],
                  output_dir=str(out / "rm"), max_steps=cfg.rm_steps, learning_rate=1e-3, **common)
    dpo = DPOConfig(model=str(out / "sft"), data=data["prefs"], eval_data=data["prefs_eval"],
                    output_dir=str(out / "dpo"), max_steps=cfg.dpo_steps, learning_rate=1e-4, beta=0.1,
                    precompute_ref=True, **common)
    return sft, rm, dpo


def kind_rate(model_dir: str, prompts: list[str], n: int, seed: int) -> tuple[float, list[str]]:
    """Fraction of sampled responses the gold preference calls kind; and the samples."""
    from ..generation import sample

    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    texts = sample(model, tok, prompts * n, max_new_tokens=12, temperature=1.0, seed=seed)
    return sum(map(toy.is_kind, texts)) / len(texts), texts


def run_demo(cfg: DemoConfig) -> dict:
    from ..train.dpo import run_dpo
    from ..train.rm import run_rm
    from ..train.sft import run_sft

    out = Path(cfg.output_dir)
    data = toy.write_dataset(out / "data", seed=cfg.seed)
    make_tiny_model_dir(out / "base", toy.vocabulary_texts(), seed=cfg.seed, hidden_size=128)
    sft, rm, dpo = stage_configs(cfg, data, out)
    print(f"[rlhfkit demo] world data in {out / 'data'}; stages write to {out}/<stage>/")
    s_sft, s_rm, s_dpo = run_sft(sft), run_rm(rm), run_dpo(dpo)
    prompts = [toy.prompt_for(i) for i in toy.ITEMS]
    sft_rate, _ = kind_rate(sft.output_dir, prompts, cfg.samples_per_prompt, cfg.seed)
    dpo_rate, examples = kind_rate(dpo.output_dir, prompts, cfg.samples_per_prompt, cfg.seed)
    summary = {"sft_eval": s_sft.get("train", {}).get("loss"),
               "rm_eval_accuracy": s_rm["eval_accuracy"], "rm_eval_accuracy_ci": s_rm["eval_accuracy_ci"],
               "dpo_eval_reward_accuracy": s_dpo["eval_reward_accuracy"],
               "kind_rate_sft": sft_rate, "kind_rate_dpo": dpo_rate, "dpo_samples": examples[:5],
               "seconds": {"sft": s_sft["train_seconds"], "rm": s_rm["train_seconds"], "dpo": s_dpo["train_seconds"]}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    lo, hi = s_rm["eval_accuracy_ci"]
    print("\n".join([
        "", "rlhfkit demo: results on held-out data",
        f"  reward model accuracy      {s_rm['eval_accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f})",
        f"  DPO implicit-reward acc.   {s_dpo['eval_reward_accuracy']:.3f}",
        f"  kind responses, SFT        {sft_rate:.1%}",
        f"  kind responses, DPO        {dpo_rate:.1%}",
        *[f"  DPO sample                 {t!r}" for t in examples[:3]],
        f"  summary                    {out / 'summary.json'}"]))
    return summary
