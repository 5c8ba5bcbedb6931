"""Reward sources behind one interface: ``source(prompts, completions, **columns) -> (B,) tensor``.

A reward-model folder (from ``rlhfkit rm``; ``reward_model.RewardModelSource``), a Python function
with TRL's reward-function signature ``fn(prompts, completions, **kwargs) -> list[float | None]``
given as ``path/to/file.py:name`` or ``module:name``, an AI judge given as
``judge:URL_OR_FOLDER[;key=value...]`` (the probability that the completion beats a reference
response; see ``judge/reward.py``), or a weighted sum of several. Sources are called with the
prompts (strings or chat message lists), the sampled response texts, and keywords: the dataset's
other columns (one list each, one value per completion), ``completion_ids`` (the sampled token ids
of each completion, EOS included) and ``trainer_state`` where the caller has them.

A function gets what TRL 1.16's GRPO trainer passes (``FunctionSource``): ``prompts``;
``completions`` as ``[{"role": "assistant", "content": text}]`` per completion when the prompts
are message lists, else the texts; ``completion_ids``; every column; ``trainer_state`` (a
``transformers.TrainerState``: ``global_step``, ``max_steps``). ``None`` for a completion means
"no score from this function": as in TRL it becomes NaN and is left out of the weighted sum; a
completion no source scores keeps NaN, which the online engine treats as TRL does (left out of
its group's baseline, advantage 0). A function that raises is reported in one line naming it,
its file and the first example it fails on.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from .reward_model import RewardModelSource


def completion_ids(response_ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> list[list[int]]:
    """Each sampled completion's token ids (EOS included, padding not), as TRL passes ``completion_ids``."""
    return [row[keep.bool()].tolist() for row, keep in zip(response_ids_BT.cpu(), mask_BT.cpu())]


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


class RewardFunctionError(ValueError):
    """A reward function raised: one line naming it, its file and the example (``index``, the
    position in the batch the source was called with; None when no single example fails)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))
        self.index = index


def _one(kwargs: dict, n: int, i: int) -> dict:
    """The keywords of example ``i`` alone: every length-``n`` list sliced, anything else as is."""
    return {k: v[i:i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}


class FunctionSource:
    """A TRL-style reward function, called as TRL 1.16 calls it; its output is checked (length,
    None or a finite number)."""

    def __init__(self, spec: str):
        self.name = spec
        self.fn = load_function(spec)
        self.file = inspect.getsourcefile(self.fn) or "?"

    def __call__(self, prompts: list, completions: list[str], completion_ids: list[list[int]] | None = None,
                 trainer_state=None, **columns) -> torch.Tensor:
        from transformers import TrainerState

        chat = bool(prompts) and isinstance(prompts[0], list)
        kwargs = dict(prompts=list(prompts),
                      completions=[[{"role": "assistant", "content": c}] for c in completions] if chat
                      else list(completions),
                      completion_ids=completion_ids, trainer_state=trainer_state or TrainerState(), **columns)
        values = list(self._call(kwargs, len(completions)))
        if len(values) != len(completions):
            raise ValueError(f"reward_fn {self.name}: returned {len(values)} values for {len(completions)} completions")
        bad = [v for v in values if v is not None and not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"reward_fn {self.name}: returned a non-finite value ({bad[0]!r}); "
                             "return None for a completion it cannot score")
        return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)

    def _call(self, kwargs: dict, n: int):
        try:
            return self.fn(**kwargs)
        except Exception as batch_error:
            # Find the first example that fails alone (the function runs again, one example at a time).
            for i in range(n):
                try:
                    self.fn(**_one(kwargs, n, i))
                except Exception as e:
                    raise self._error(e, f"example {i} of {n}", i) from e
            raise self._error(batch_error, f"the batch of {n} (every example alone passes)", None) from batch_error

    def _error(self, e: Exception, where: str, index: int | None) -> RewardFunctionError:
        return RewardFunctionError(f"reward_fn {self.name} (file {self.file}) raised {type(e).__name__}: {e} "
                                   f"on {where}", index)


class WeightedSum:
    """Several sources combined with weights; each source's mean is also reported. A NaN score
    (a function's None) is left out of the sum; a completion no source scored stays NaN."""

    def __init__(self, sources: list, weights: list[float]):
        self.sources, self.weights = sources, weights
        self.name = " + ".join(f"{w:g}*{s.name}" for s, w in zip(sources, weights))
        self.last_parts: dict[str, float] = {}

    def __call__(self, prompts: list, completions: list[str], **kwargs) -> torch.Tensor:
        parts_SN = torch.zeros(len(self.sources), len(completions))
        self.last_parts = {}
        for s, (source, weight) in enumerate(zip(self.sources, self.weights)):
            scores = source(prompts, completions, **kwargs).float().cpu()
            if not scores.isnan().all():
                self.last_parts[source.name] = float(scores.nanmean())
            parts_SN[s] = weight * scores
        total = parts_SN.nansum(0)
        return torch.where(parts_SN.isnan().all(0), torch.full_like(total, math.nan), total)


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
