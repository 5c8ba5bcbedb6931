"""Reward sources behind one interface: ``source(prompts, completions, **columns) -> (B,) tensor``.

A reward-model folder (from ``rlhfkit rm``), a Python function with TRL's reward-function
signature ``fn(prompts, completions, **kwargs) -> list[float]`` given as ``path/to/file.py:name``
or ``module:name``, an AI judge given as ``judge:URL_OR_FOLDER[;key=value...]`` (the probability
that the completion beats a reference response; see ``judge/reward.py``), or a weighted sum of
several. Prompts are strings or chat message lists;
completions are the sampled response texts. Extra dataset columns reach functions as keyword
lists, one value per completion, as in TRL.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

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


def load_function(spec: str) -> Callable:
    """``path/to/file.py:name`` or ``package.module:name`` -> the function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"reward_fn {spec!r}: expected 'path/to/file.py:function' or 'module:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"reward_fn {spec!r}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"rlhfkit_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        # registered before it runs, as an import would be: dataclasses (and pickle) look a class's
        # module up in sys.modules
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_spec.name, None)
            raise
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward_fn {spec!r}: {target} has no function {name!r}")
    return fn


class FunctionSource:
    """A TRL-style reward function; its output is checked (length, finite numbers)."""

    def __init__(self, spec: str):
        self.name = spec
        self.fn = load_function(spec)

    def __call__(self, prompts: list, completions: list[str], **columns) -> torch.Tensor:
        out = self.fn(prompts=prompts, completions=completions, **columns)
        values = list(out)
        if len(values) != len(completions):
            raise ValueError(f"reward_fn {self.name}: returned {len(values)} values for {len(completions)} completions")
        bad = [v for v in values if v is None or not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"reward_fn {self.name}: returned a non-finite value or None ({bad[0]!r})")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)


class WeightedSum:
    """Several sources combined with weights; each source's mean is also reported."""

    def __init__(self, sources: list, weights: list[float]):
        self.sources, self.weights = sources, weights
        self.name = " + ".join(f"{w:g}*{s.name}" for s, w in zip(sources, weights))
        self.last_parts: dict[str, float] = {}

    def __call__(self, prompts: list, completions: list[str], **columns) -> torch.Tensor:
        total = torch.zeros(len(completions))
        self.last_parts = {}
        for source, weight in zip(self.sources, self.weights):
            scores = source(prompts, completions, **columns)
            self.last_parts[source.name] = float(scores.mean())
            total += weight * scores
        return total


def _judge_source(spec: str, device: torch.device, trust_remote_code: bool):
    from .judge.reward import JudgeReward

    return JudgeReward(spec, device, trust_remote_code)


def make_reward(reward_model: str, reward_fn: list[str], reward_weights: list[float], device: torch.device,
                trust_remote_code: bool = False) -> WeightedSum:
    """The configured reward sources, reward model first, then functions in order."""
    sources = ([RewardModelSource(reward_model, device, trust_remote_code=trust_remote_code)] if reward_model else [])
    sources += [_judge_source(spec, device, trust_remote_code) if spec.startswith("judge:") else FunctionSource(spec)
                for spec in reward_fn]
    if not sources:
        raise ValueError("no reward source: set reward_model and/or reward_fn")
    weights = list(reward_weights) or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(sources)} reward sources")
    return WeightedSum(sources, weights)
