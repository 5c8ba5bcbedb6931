"""``rlhfkit sample-pairs``: sample k responses per prompt and write pairs for people (or a judge,
or simulated annotators) to compare, as JSONL ``{id, prompt, response_a, response_b, ...}``.

The prompt file's extra columns (for example ``category``) are copied to every pair, so they
reach annotation tools and later stages. Pairs whose two responses are identical are dropped and
counted: nothing can be learned from them (and the preference loaders refuse them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .config import ConfigError, SamplerRunConfig, dump_config, option
from .data import load_prompts
from .data.tokenize import prompt_ids
from .models import load_causal_lm, load_tokenizer, resolve_device
from .sampling import generate


@dataclass
class SamplePairsConfig(SamplerRunConfig):
    """Sample k responses per prompt from a policy and write them as pairs to compare."""

    stage: ClassVar[str] = "sample-pairs"

    k: int = option(2, "Responses sampled per prompt (even); written as k/2 pairs {prompt, response_a, response_b}.")

    def check(self) -> None:
        if self.k < 2 or self.k % 2:
            raise ConfigError(f"config: field 'k' must be an even number >= 2, got {self.k}")


def sample_responses(cfg, k: int) -> tuple[list, list[str]]:
    """The prompt examples and ``k`` sampled texts per prompt, prompt-major."""
    prompts = load_prompts(cfg.data)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_causal_lm(cfg.model, trust_remote_code=cfg.trust_remote_code).to(device)
    rows = [prompt_ids(tokenizer, p.prompt)[-cfg.max_prompt_length:] for p in prompts for _ in range(k)]
    rollout = generate(model, tokenizer, rows, cfg, batch_size=cfg.batch_size,
                       generator=torch.Generator(device=device).manual_seed(cfg.seed))
    return prompts, rollout.texts


def run_sample_pairs(cfg: SamplePairsConfig) -> dict:
    prompts, texts = sample_responses(cfg, cfg.k)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = identical = 0
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            mine = texts[i * cfg.k:(i + 1) * cfg.k]
            for j in range(0, cfg.k, 2):
                a, b = mine[j], mine[j + 1]
                if a.strip() == b.strip() or not a.strip() or not b.strip():
                    identical += 1
                    continue
                row = {**p.extra, "id": f"{i}-{j // 2}", "prompt": p.prompt, "response_a": a, "response_b": b}
                f.write(json.dumps(row) + "\n")
                written += 1
    summary = {"prompts": len(prompts), "pairs": written, "dropped_identical_or_empty": identical, "k": cfg.k}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    print(f"[rlhfkit sample-pairs] {written} pairs from {len(prompts)} prompts ({identical} identical or empty "
          f"dropped) -> {out / 'pairs.jsonl'}")
    return summary
