"""Scoring texts with a reward-model folder (from ``rlhfkit rm``), tokenised as it was trained.

The lowest reward source: ``rewards`` (the trainers' reward sources) and ``judge.local`` (a reward
model as a pairwise judge) both build on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.tokenize import split_ids
from .models import load_reward_model, load_tokenizer, reward_forward


class RewardModelSource:
    """Scores with a sequence-classification reward model, tokenised the way ``rlhfkit rm`` trained it."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 32, trust_remote_code: bool = False):
        self.name = f"reward_model:{Path(path).name}"
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_reward_model(path, self.tokenizer, trust_remote_code=trust_remote_code).to(device).eval()
        self.model.requires_grad_(False)
        self.device, self.batch_size = device, batch_size

    def __call__(self, prompts: list, completions: list[str], **columns) -> torch.Tensor:
        return self.score(prompts, [[{"role": "assistant", "content": c}] if isinstance(p, list) else c
                                    for p, c in zip(prompts, completions)])

    @torch.no_grad()
    def score(self, prompts: list, responses: list) -> torch.Tensor:
        """(N,) rewards of responses as preference data holds them: strings, or message lists after
        chat prompts (the pair's ``chosen``/``rejected``), tokenised as in training."""
        rows = [head + tail for p, r in zip(prompts, responses)
                for head, (tail,) in [split_ids(self.tokenizer, p, [r])]]
        scores = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i:i + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=self.device)
            scores.append(reward_forward(self.model, ids, mask))
        return torch.cat(scores).float().cpu()
