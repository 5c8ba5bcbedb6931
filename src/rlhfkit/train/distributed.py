"""Data parallelism for every trainer: the prepared model, each process's share of a batch, and
the collectives on metrics and samples (``torchrun`` / ``accelerate launch``; on one process each
helper is the identity).

Batching contract: ``batch_size`` examples per optimiser step across all processes, in
``micro_batch_size`` pieces per process. Every process computes the same global batch of indices
and takes its own contiguous share (rank r: positions [r*B/W, (r+1)*B/W)), so shards never overlap
and nothing is dropped. A recipe's loss runs *inside* the prepared model's forward
(:class:`ForwardFn`): DDP only all-reduces gradients, and FSDP only gathers parameters, for work
done through the wrapper's forward, while the recipes call sub-modules (backbone, head) directly.

Data order is a pure function of (seed, epoch): step s of epoch e reads positions
[s*B, (s+1)*B) of a permutation seeded by seed + e. A checkpoint therefore needs only the step
number to restore the data position exactly.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what was kept."""


class ForwardFn(torch.nn.Module):
    """Holds the trained module and runs a function of it as ``forward``: ``wrapped(fn, *args)``
    returns ``fn(module, *args)``. Wrapped by ``accelerator.prepare``, a recipe's whole loss (which
    calls backbones and heads directly, several forward passes deep) becomes one forward of the
    DDP/FSDP module, so DDP's reducer expects this backward and FSDP gathers the root's parameters.
    On one process it adds nothing but the call."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        # FSDP's transformer auto-wrap policy reads the layer classes to shard from here: those every
        # model inside names (PPO's policy + critic are two models)
        names = {n for m in module.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        self._no_split_modules = sorted(names) or None

    def forward(self, fn: Callable, *args):
        return fn(self.module, *args)


def inner(run, prepared) -> torch.nn.Module:
    """The trained module inside a prepared :class:`ForwardFn` (the same object the recipe built)."""
    return run.accelerator.unwrap_model(prepared).module


# --------------------------------------------------------------------------- batches and shares


def batch_plan(n_examples: int, cfg, world: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, micro-batch size per process)."""
    if n_examples < cfg.batch_size:
        raise TrainingError(f"{cfg.data}: {n_examples} training examples is fewer than batch_size "
                            f"{cfg.batch_size}; lower batch_size or add data")
    if cfg.batch_size % world:
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes: batch_size "
                            f"is global (split evenly across processes); use a multiple of {world}")
    steps_per_epoch = n_examples // cfg.batch_size
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    micro = min(cfg.micro_batch_size or cfg.batch_size, cfg.batch_size // world)
    return steps_per_epoch, total, micro


def partial_batch_note(n_examples: int, batch_size: int) -> str:
    """The log line for the examples an epoch leaves out ("" when the batch divides the data).

    Steps are whole batches, unlike TRL's data loader, which keeps the last partial one: data order
    is then a pure function of (seed, epoch) and the step, which makes resuming exact, and every step's
    gradient has the same scale. Said once, so that no example is dropped without a word."""
    left = n_examples % batch_size
    return "" if not left else (f"last partial batch: {left} of {n_examples} examples are left out of each epoch "
                                f"(steps use whole batches of {batch_size}; the data is reshuffled every epoch)")


def sharded_modules(model: torch.nn.Module | None) -> list:
    """The FSDP2 groups (``FSDPModule``) inside ``model``, outermost first; [] when it is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)] if model is not None else []


def is_sharded(run) -> bool:
    """FSDP2: no process holds the full weights of the trained module."""
    return bool(sharded_modules(run.prepared))


def step_indices(step: int, n_examples: int, batch_size: int, steps_per_epoch: int, seed: int) -> list[int]:
    """The global batch of example indices for optimiser step ``step`` (see module docstring)."""
    epoch, pos = divmod(step, steps_per_epoch)
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist()


def my_share(run, indices: list) -> list:
    """This process's contiguous slice of a global batch: rank r of W takes [r*B/W, (r+1)*B/W),
    so the shards cover the batch exactly once (``batch_plan`` checks that W divides B)."""
    share = len(indices) // run.accelerator.num_processes
    rank = run.accelerator.process_index
    return indices[rank * share:(rank + 1) * share]


# --------------------------------------------------------------------------- collectives


def reduce_sums(acc, sums: dict) -> dict:
    """Sum each metric over processes (one all-reduce); the same dict comes back everywhere."""
    if acc.num_processes == 1 or not sums:
        return sums
    keys = sorted(sums)  # the same order on every process, whatever order each built its dict in
    t = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "sum")
    total = dict(zip(keys, t.tolist()))
    return {k: total[k] for k in sums}


def mean_over_processes(acc, figures: dict) -> dict:
    """Per-process means of equally many samples, averaged: the global means."""
    world = acc.num_processes
    return {k: v / world for k, v in reduce_sums(acc, {k: float(v) for k, v in figures.items()}).items()}


def all_sum(acc, t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over processes (itself on one process), on ``t``'s device."""
    return t if acc.num_processes == 1 else acc.reduce(t.to(acc.device), "sum").to(t.device)


def gather(acc, t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` concatenated along dim 0 in rank order (the global batch order)."""
    return t if acc.num_processes == 1 else acc.gather(t.contiguous().to(acc.device)).to(t.device)


def grad_norm(acc, model, max_norm: float) -> float:
    """The gradient norm over every process's gradients, clipped to ``max_norm`` when it is > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(_full(acc.clip_grad_norm_(params, max_norm)))
    return float(_full(torch.nn.utils.get_total_norm([p.grad for p in params]))) if params else 0.0


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (FSDP2's norms of sharded gradients), a tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
