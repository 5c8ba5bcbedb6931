"""Best-of-N sampling: draw N completions per prompt, keep the one a reward source scores highest.

The simplest way to spend reward-model quality without training, and a baseline for RL: the
best-of-N policy's KL to the sampling policy is at most log N - (N - 1)/N nats (Stiennon et al.
2020, appendix; Beirami et al. 2024 show it is an upper bound), written to summary.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .config import ConfigError, RewardSourceConfig, SamplerRunConfig, dump_config, option
from .data import load_prompts
from .data.tokenize import prompt_ids
from .kl import kl_bound
from .models import load_causal_lm, load_tokenizer, resolve_device
from .rewards import make_reward
from .sampling import generate


@dataclass
class BestOfNConfig(RewardSourceConfig, SamplerRunConfig):
    """Sample N completions per prompt, keep the best by a reward source (rejection sampling)."""

    stage: ClassVar[str] = "best-of-n"

    n: int = option(4, "Completions sampled per prompt.")

    def check(self) -> None:
        if self.n < 1 or not (self.reward_model or self.reward_fn):
            raise ConfigError("config: best-of-n needs 'n' >= 1 and a reward source ('reward_model' or 'reward_fn')")


def run_best_of_n(cfg: BestOfNConfig) -> dict:
    prompts = load_prompts(cfg.data)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_causal_lm(cfg.model, trust_remote_code=cfg.trust_remote_code).to(device)
    reward = make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, device, cfg.trust_remote_code)
    rows = [prompt_ids(tokenizer, p.prompt)[-cfg.max_prompt_length:] for p in prompts for _ in range(cfg.n)]
    rollout = generate(model, tokenizer, rows, cfg, batch_size=cfg.batch_size,
                       generator=torch.Generator(device=device).manual_seed(cfg.seed))
    flat_prompts = [p.prompt for p in prompts for _ in range(cfg.n)]
    scores = reward(flat_prompts, rollout.texts).view(len(prompts), cfg.n)
    best = scores.argmax(dim=1)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "best_of_n.jsonl").open("w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            texts = rollout.texts[i * cfg.n:(i + 1) * cfg.n]
            f.write(json.dumps({"prompt": p.prompt, "completion": texts[best[i]], "reward": float(scores[i, best[i]]),
                                "candidates": texts, "rewards": scores[i].tolist()}) + "\n")
    summary = {"n": cfg.n, "prompts": len(prompts), "kl_bound": kl_bound(cfg.n),
               "mean_reward_best": float(scores.max(dim=1).values.mean()), "mean_reward_all": float(scores.mean())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    print(f"[rlhfkit best-of-n] {len(prompts)} prompts x {cfg.n}: mean reward {summary['mean_reward_all']:.4g} -> "
          f"best {summary['mean_reward_best']:.4g}; KL bound {summary['kl_bound']:.4g} nats -> {out / 'best_of_n.jsonl'}")
    return summary
