"""The training loop every offline recipe shares: batching, accumulation, clipping, the
non-finite guard, logging, evaluation, and exact checkpoint/resume.

A recipe (sft.py, rm.py, dpo.py) loads its models and data, defines ``loss_fn`` for one
micro-batch and ``evaluate`` for the held-out set, and hands them to :func:`train`. The loop is
plain PyTorch on `accelerate` (device placement, DDP, autocast); no ``transformers.Trainer``.

Batching contract: ``batch_size`` examples per optimiser step across all processes, in
``micro_batch_size`` pieces per process. ``loss_fn`` gets the step's total number of units
(response tokens for SFT, pairs for RM/DPO) and divides its *sum* by it, so 4 x 2 accumulation,
1 x 8 and 2 processes x 4 all produce the same gradient.

Data parallelism (``torchrun`` / ``accelerate launch``): every process computes the same global
batch of indices and takes its own contiguous share (rank r: positions [r*B/W, (r+1)*B/W)), so
shards never overlap and nothing is dropped. The recipe's loss and evaluation run *inside* the
prepared model's forward (:class:`ForwardFn`): DDP only all-reduces gradients, and FSDP only
gathers parameters, for work done through the wrapper's forward, while the recipes call
sub-modules (backbone, head) directly. Metrics are summed over processes; only the main process
writes files, and a write error there stops every process with its message (no one is left
waiting at a barrier).

Data order is a pure function of (seed, epoch): step s of epoch e reads positions
[s*B, (s+1)*B) of a permutation seeded by seed + e. A checkpoint therefore needs only the step
number to restore the data position exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save_model as save_module
from transformers import PreTrainedModel
from tqdm.auto import tqdm

from ..config import dump_config
from ..data import LoadReport
from ..data.report import bad_record_summary
from ..models import (ADAPTER_WEIGHTS, add_lora, check_model_path, enable_gradient_checkpointing, is_peft,
                      load_causal_lm, load_reward_model, resolve_device, resolve_dtype, save_model)
from ..tracking import MetricsLogger

CHECKPOINTS = "checkpoints"
TRAINABLE_ONLY = "trainable-only"  # checkpoint metadata: frozen (LoRA base) weights are not in the file


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what was kept."""


@dataclass
class Run:
    """What one training run shares between the recipe and the loop."""

    cfg: Any
    stage: str
    accelerator: Accelerator
    dtype: torch.dtype
    output_dir: Path
    start_step: int = 0
    clock_start: float = field(default_factory=time.perf_counter)
    notes: dict = field(default_factory=dict)  # summary.json figures gathered before training (note_data)
    prepared: Any = None  # the accelerate-prepared ForwardFn, once training has started

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def start_clock(self) -> None:
        """Called by the recipe once models are loaded: ``train_seconds`` counts from here."""
        self.clock_start = time.perf_counter()

    def print(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(f"[rlhfkit {self.stage}] {msg}")


def start_run(cfg, stage: str) -> Run:
    """Seed everything, pick device and dtype, create output_dir and write the resolved config.
    A local model path that is not there is refused first, before anything is written."""
    check_model_path(cfg.model, "model")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    return Run(cfg=cfg, stage=stage, accelerator=accelerator, dtype=dtype, output_dir=out)


def load_trained_model(cfg, run: Run, path: str = "", reward_tokenizer=None):
    """The model a recipe trains, from ``path`` (default ``cfg.model``), on the run's device: a causal
    LM, or a scalar reward model when ``reward_tokenizer`` is given; with ``gradient_checkpointing``
    its layers recompute their activations in the backward pass (``models.enable_gradient_checkpointing``).

    Full fine-tuning: fp32 weights (the optimiser's master weights; autocast computes in the run's
    dtype). With ``lora_r > 0`` the base is frozen, so it is held in the compute dtype (bf16 on GPUs
    that have it; 4-bit with ``load_in_4bit``) under an fp32 LoRA adapter (``models.add_lora``).
    """
    path = path or cfg.model
    lora, q4 = cfg.lora_r > 0, cfg.lora_r > 0 and cfg.load_in_4bit
    kw = dict(dtype=run.dtype if lora else torch.float32, trust_remote_code=cfg.trust_remote_code,
              allow_pickle=cfg.allow_pickle, load_in_4bit=q4)
    if reward_tokenizer is not None:
        model = load_reward_model(path, reward_tokenizer, **kw)
    else:
        model = load_causal_lm(path, **kw)
    if lora:
        model = add_lora(model, path, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                         reward=reward_tokenizer is not None, quantized=q4)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        run.print(f"LoRA r={cfg.lora_r} on {path}: {n_train:,} of {n_all:,} parameters train "
                  f"({100 * n_train / n_all:.2f}%)")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model if q4 else model.to(run.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ForwardFn(torch.nn.Module):
    """Holds the trained module and runs a function of it as ``forward``: ``wrapped(fn, *args)``
    returns ``fn(module, *args)``. Wrapped by ``accelerator.prepare``, a recipe's whole loss (which
    calls backbones and heads directly, several forward passes deep) becomes one forward of the
    DDP/FSDP module, so DDP's reducer expects this backward and FSDP gathers the root's parameters.
    On one process it adds nothing but the call."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        # FSDP's transformer auto-wrap policy reads the layer classes to shard from here
        self._no_split_modules = getattr(module, "_no_split_modules", None)

    def forward(self, fn: Callable, *args):
        return fn(self.module, *args)


def prepare(run: Run, module: torch.nn.Module, optimizer):
    """(prepared ForwardFn around ``module``, prepared optimiser); ``inner`` gets ``module`` back."""
    return run.accelerator.prepare(ForwardFn(module), optimizer)


def inner(run: Run, prepared) -> torch.nn.Module:
    """The trained module inside a prepared :class:`ForwardFn` (the same object the recipe built)."""
    return run.accelerator.unwrap_model(prepared).module


# --------------------------------------------------------------------------- batching


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


def check_engine(run: Run, share: int, micro: int) -> None:
    """Refuse what the engine in use cannot do, naming the field, before any compute is spent.

    DeepSpeed steps its optimiser inside ``accelerator.backward`` unless accelerate's own
    accumulation counter says otherwise, so this loop's manual accumulation would step after every
    micro-batch: require one micro-batch per process and step. FSDP and DeepSpeed shard the
    optimiser state across processes, which the exact checkpoints here (written by the main
    process) do not gather: refuse save_steps and resume under them.
    """
    kind, cfg = run.accelerator.distributed_type, run.cfg
    if kind == DistributedType.DEEPSPEED and micro != share:
        raise TrainingError(f"micro_batch_size {micro}: under DeepSpeed set micro_batch_size to batch_size / "
                            f"processes = {share} (gradient accumulation is not supported with DeepSpeed here)")
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED) and (cfg.save_steps or cfg.resume):
        raise TrainingError(f"save_steps / resume: checkpoints are not supported under {kind.value} yet (it shards the "
                            "optimiser state; the final model is saved); use DDP for runs that need checkpoints")


def step_indices(step: int, n_examples: int, batch_size: int, steps_per_epoch: int, seed: int) -> list[int]:
    """The global batch of example indices for optimiser step ``step`` (see module docstring)."""
    epoch, pos = divmod(step, steps_per_epoch)
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist()


def my_share(run: Run, indices: list) -> list:
    """This process's contiguous slice of a global batch: rank r of W takes [r*B/W, (r+1)*B/W),
    so the shards cover the batch exactly once (``batch_plan`` checks that W divides B)."""
    share = len(indices) // run.accelerator.num_processes
    rank = run.accelerator.process_index
    return indices[rank * share:(rank + 1) * share]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def eval_batches(run: Run, examples: list, collate: Callable, batch_size: int):
    """Yield device batches over a held-out set, in order."""
    for i in range(0, len(examples), batch_size):
        yield to_device(collate(examples[i:i + batch_size]), run.device)


# --------------------------------------------------------------------------- the loop


@dataclass
class Task:
    """A recipe's side of the loop."""

    model: torch.nn.Module
    examples: list
    collate: Callable[[list], dict]
    loss_fn: Callable[[torch.nn.Module, dict, float], tuple[torch.Tensor, dict[str, float]]]
    units: Callable[[Any], float] = lambda ex: 1.0
    evaluate: Callable[[torch.nn.Module], dict] | None = None
    progress_keys: tuple[str, ...] = ("loss",)
    # name -> (numerator, denominator): per-unit metrics formed after summing over micro-batches
    # and processes, e.g. kl per token = summed k1 / response tokens.
    ratios: dict[str, tuple[str, str]] = field(default_factory=dict)
    tokenizer: Any = None


def make_optimizer(model: torch.nn.Module, cfg, total_steps: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=_can_fuse(params))
    warmup = cfg.warmup_steps if getattr(cfg, "warmup_steps", 0) > 0 else int(round(cfg.warmup_ratio * total_steps))
    scheduler = get_scheduler(cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def _can_fuse(params: list) -> bool:
    """The fused AdamW kernel (one pass over all parameters; ~3x faster than foreach on CPU for a
    few-million-parameter model) where this torch has it for the parameters' device and dtype."""
    if not params or len({(p.device.type, p.dtype) for p in params}) != 1:
        return False
    try:
        torch.optim.AdamW([torch.zeros(1, device=params[0].device, dtype=params[0].dtype, requires_grad=True)],
                          fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return params[0].dtype.is_floating_point


def train(run: Run, task: Task) -> dict:
    """Run the optimiser steps; returns the summary figures (the recipe adds its own)."""
    cfg, acc = run.cfg, run.accelerator
    steps_per_epoch, total, micro = batch_plan(len(task.examples), cfg, acc.num_processes)
    if partial_batch_note(len(task.examples), cfg.batch_size):
        run.print(partial_batch_note(len(task.examples), cfg.batch_size))
    check_engine(run, cfg.batch_size // acc.num_processes, micro)
    optimizer, scheduler = make_optimizer(task.model, cfg, total)
    model, optimizer = prepare(run, task.model, optimizer)
    run.prepared = model
    state = {"bad_steps": 0, "skipped_steps": 0}
    if cfg.resume:
        run.start_step = load_checkpoint(run, task.model, optimizer, scheduler, state)
    logger = MetricsLogger(run.output_dir, cfg.report_to, run.is_main,
                           resume_step=run.start_step if cfg.resume else None, run_name=f"rlhfkit-{run.stage}")
    bar = tqdm(total=total, initial=run.start_step, disable=not run.is_main, desc=run.stage, dynamic_ncols=True)
    last, tokens_seen, step = {}, 0, run.start_step
    try:
        for step in range(run.start_step, total):
            _fault_hook(step)
            model.train()
            t0 = time.perf_counter()
            metrics, ntok = _one_step(run, task, model, optimizer, step, steps_per_epoch, micro, state)
            scheduler.step()
            tokens_seen += ntok
            metrics.update(lr=scheduler.get_last_lr()[0], tokens_per_second=ntok / (time.perf_counter() - t0),
                           skipped_steps=state["skipped_steps"])
            last = metrics
            done = step + 1
            if done % cfg.logging_steps == 0 or done == total:
                logger.log(done, metrics)
            if task.evaluate and cfg.eval_steps and done % cfg.eval_steps == 0 and done != total:
                logger.log(done, _evaluate(task, model))
            if cfg.save_steps and done % cfg.save_steps == 0 and done != total:
                state["epoch"], state["batch_in_epoch"] = divmod(done, steps_per_epoch)  # data position
                save_checkpoint(run, task.model, optimizer, scheduler, done, state)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in task.progress_keys if k in metrics})
        bar.close()
        train_seconds = time.perf_counter() - run.clock_start
        final_eval = _evaluate(task, model) if task.evaluate else {}
        if final_eval:
            logger.log(total, final_eval)
    finally:
        logger.close()
    return {"steps": total, "train_seconds": round(train_seconds, 3), "resumed_from_step": run.start_step,
            "skipped_steps": state["skipped_steps"], "train": last, **final_eval,
            "tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1)}


def _evaluate(task: Task, model) -> dict:
    """Every process evaluates the whole held-out set through the prepared model (identical
    figures everywhere, no reduction needed; under FSDP all processes must take part anyway)."""
    model.eval()
    with torch.no_grad():
        return model(task.evaluate)


def _one_step(run: Run, task: Task, model, optimizer, step: int, steps_per_epoch: int, micro: int,
              state: dict) -> tuple[dict, int]:
    """Forward/backward over this process's micro-batches, clip, guard, optimiser step."""
    cfg, acc = run.cfg, run.accelerator
    world = acc.num_processes
    indices = step_indices(step, len(task.examples), cfg.batch_size, steps_per_epoch, cfg.seed)
    units = float(sum(task.units(task.examples[i]) for i in indices))
    mine = my_share(run, indices)
    chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
    sums: dict[str, float] = {}
    ntok = 0
    for k, chunk in enumerate(chunks):
        batch = to_device(task.collate([task.examples[i] for i in chunk]), run.device)
        ntok += int(batch["num_tokens"]) if "num_tokens" in batch else int(batch["attention_mask"].sum())
        sync = acc.no_sync(model) if k < len(chunks) - 1 and world > 1 else nullcontext()
        with sync, acc.autocast():
            loss, metrics = model(task.loss_fn, batch, units)
            # DDP averages gradients over processes; the loss is a share of the global sum.
            acc.backward(loss * world)
        for name, v in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(v)
    sums["_tokens"] = float(ntok)
    sums = _reduce(acc, sums)
    ntok = int(sums.pop("_tokens"))  # every process's tokens, for tokens_per_second
    for name, (num, den) in task.ratios.items():
        sums[name] = sums.pop(num) / max(sums.pop(den), 1.0)
    grad_norm = _grad_norm(acc, model, cfg.max_grad_norm)
    if not (math.isfinite(sums.get("loss", 0.0)) and math.isfinite(grad_norm)):
        _skip_bad_step(run, optimizer, step, state)
    else:
        optimizer.step()
        state["bad_steps"] = 0
    optimizer.zero_grad(set_to_none=True)
    sums["grad_norm"] = grad_norm
    return sums, ntok


def _reduce(acc: Accelerator, sums: dict) -> dict:
    """Sum each metric over processes (one all-reduce); the same dict comes back everywhere."""
    if acc.num_processes == 1 or not sums:
        return sums
    keys = sorted(sums)  # the same order on every process, whatever order each built its dict in
    t = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "sum")
    total = dict(zip(keys, t.tolist()))
    return {k: total[k] for k in sums}


def _grad_norm(acc: Accelerator, model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = acc.clip_grad_norm_(params, max_norm)
        if norm is not None:  # None under DeepSpeed, which clips (gradient_clipping) inside its step
            return float(norm)
    return float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0


def _skip_bad_step(run: Run, optimizer, step: int, state: dict) -> None:
    """A non-finite loss or gradient: drop this step's update, count it, stop after too many in a row."""
    state["bad_steps"] += 1
    state["skipped_steps"] += 1
    run.print(f"step {step + 1}: non-finite loss or gradient; update skipped "
              f"({state['bad_steps']} in a row, limit {run.cfg.max_bad_steps})")
    if state["bad_steps"] >= run.cfg.max_bad_steps:
        good = latest_checkpoint(run.output_dir)
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
        raise TrainingError(f"stopped at step {step + 1}: {state['bad_steps']} consecutive steps had a "
                            f"non-finite loss or gradient (lower learning_rate, check the data); {where}")


def _fault_hook(step: int, variable: str = "RLHFKIT_TEST_KILL_AT_STEP") -> None:
    """Test hook for the kill-and-resume tests: SIGKILL this process at the start of a step
    (``RLHFKIT_TEST_KILL_AT_STEP``) or halfway through writing a checkpoint
    (``RLHFKIT_TEST_KILL_IN_CHECKPOINT``, the checkpoint's step)."""
    target = os.environ.get(variable)
    if target is not None and int(target) == step:
        os.kill(os.getpid(), 9)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (``.tmp-*``) are never picked."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(root.glob("step-*")) if root.exists() else []
    return done[-1] if done else None


def save_checkpoint(run: Run, model, optimizer, scheduler, step: int, state: dict) -> Path | None:
    """Write model, optimiser, scheduler, RNG states and the step to a temporary folder, then
    rename it into place: a kill mid-write leaves the previous checkpoint untouched. The main
    process writes (processes hold identical weights and optimiser states under DDP); the others
    learn whether it succeeded. The RNG states are the main process's and every process restores
    them: all processes are seeded alike, data order comes from seeded generators, and online
    sampling seeds by (seed, step, rank), so nothing a resume must reproduce differs by rank."""
    root = run.output_dir / CHECKPOINTS
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"

    def write() -> None:
        previous = latest_checkpoint(run.output_dir)
        try:
            _write_checkpoint(run, model, optimizer, scheduler, step, state, root, tmp, final)
        except OSError as e:  # a full disk, a read-only folder: say so, keep the previous checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
            kept = f"the last good checkpoint is {previous}" if previous else "no checkpoint was written yet"
            raise TrainingError(f"could not write checkpoint {final} at step {step}: {e}; {kept}") from e
        for old in sorted(root.glob("step-*"))[:-max(run.cfg.save_total_limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)

    on_main(run, write)
    return final if run.is_main else None


def on_main(run: Run, write: Callable[[], Any]) -> None:
    """Run ``write`` on the main process only, then tell every process whether it failed.

    This replaces a bare barrier: with one, a full disk on the main process would raise there while
    the others waited at the barrier until the collective timeout (30 minutes by default). The
    broadcast is itself the synchronisation point, so the others stop at once with the message.
    """
    error, failure = None, None
    if run.is_main:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
            error, failure = f"{type(e).__name__}: {e}" if not isinstance(e, TrainingError) else str(e), e
    if run.accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise TrainingError(f"process {run.accelerator.process_index}: stopping because the main process failed "
                            f"to write: {error}")


def _write_checkpoint(run: Run, model, optimizer, scheduler, step: int, state: dict, root: Path, tmp: Path,
                      final: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if is_peft(model):  # a LoRA model: an adapter folder, which loads as a model (base + adapter)
        save_model(model, None, tmp)
    elif frozen:  # e.g. PPO's LoRA policy + critic: only what trains (adapters, heads); the base never changes
        tmp.mkdir(parents=True)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(tmp / "model.safetensors"), metadata={"rlhfkit": TRAINABLE_ONLY})
    elif isinstance(model, PreTrainedModel):
        save_model(model, None, tmp)
    else:  # e.g. PPO's policy + critic: one state dict (shared tensors stored once)
        tmp.mkdir(parents=True)
        save_module(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {"step": step, **state, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    _fault_hook(step, "RLHFKIT_TEST_KILL_IN_CHECKPOINT")  # weights and optimiser written, state not yet
    (tmp / "trainer_state.json").write_text(json.dumps(meta))
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    for f in [*path.iterdir(), path] if path.is_dir() else [path]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(run: Run, model, optimizer, scheduler, state: dict) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from (0 if none)."""
    ckpt = latest_checkpoint(run.output_dir)
    if ckpt is None:
        run.print(f"resume: no checkpoint in {run.output_dir / CHECKPOINTS}; starting from step 0")
        return 0
    if (ckpt / ADAPTER_WEIGHTS).exists():
        _load_adapter(model, ckpt / ADAPTER_WEIGHTS)
    else:
        _load_weights(model, ckpt / "model.safetensors")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    random.setstate((meta["python_rng"][0], tuple(meta["python_rng"][1]), meta["python_rng"][2]))
    np_state = meta["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    # the rest of the saved state: counters, and recipe state such as a KL controller's
    state.update({k: v for k, v in meta.items() if k not in ("step", "python_rng", "numpy_rng")})
    run.print(f"resumed from {ckpt} (step {meta['step']})")
    return int(meta["step"])


def _load_adapter(model, path: Path) -> None:
    """A LoRA checkpoint's adapter into ``model`` (a peft model); every trainable tensor must be in it."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_file(str(path), device=str(next(model.parameters()).device)))
    params = dict(model.named_parameters())
    untrained = [k for k in result.missing_keys if k in params and params[k].requires_grad]
    if result.unexpected_keys or untrained:
        raise TrainingError(f"{path}: checkpoint does not match the model "
                            f"(missing {untrained[:3]}, unexpected {result.unexpected_keys[:3]})")


def _load_weights(model, path: Path) -> None:
    """Load a safetensors state dict; keys the file lacks must be tied to keys it has (or, in a
    trainable-only LoRA checkpoint, be frozen base weights, which the run loaded from the base)."""
    tensors = load_file(str(path), device=str(next(model.parameters()).device))
    with safe_open(str(path), "pt") as f:
        trainable_only = (f.metadata() or {}).get("rlhfkit") == TRAINABLE_ONLY
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in tensors if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if trainable_only:
        untied = [k for k in untied if k in params and params[k].requires_grad]
    if unexpected or untied:
        raise TrainingError(f"{path}: checkpoint does not match the model "
                            f"(missing {untied[:3]}, unexpected {unexpected[:3]})")


def finish(run: Run, model, tokenizer, summary: dict) -> dict:
    """Write the final Hugging Face folder and summary.json (main process only)."""
    state_dict = full_state_dict(run)

    def write() -> None:
        try:
            if state_dict is None:
                save_model(run.accelerator.unwrap_model(model), tokenizer, run.output_dir)
            else:  # FSDP: the module holds shards; write the gathered full weights under its config
                model.save_pretrained(run.output_dir, safe_serialization=True, state_dict=state_dict)
                tokenizer.save_pretrained(run.output_dir)
            (run.output_dir / "summary.json").write_text(json.dumps({**summary, **run.notes}, indent=2))
        except OSError as e:  # a full disk at the very end: say what is still safe
            good = latest_checkpoint(run.output_dir)
            kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written"
            raise TrainingError(f"could not write the final model to {run.output_dir}: {e}; {kept}") from e

    on_main(run, write)
    summary.update(run.notes)
    return summary


def full_state_dict(run: Run, prefix: str = "module.") -> dict | None:
    """Under FSDP or DeepSpeed ZeRO-3, the full (unsharded) state dict of the trained module,
    gathered by every process (a collective) and kept on the main one; None where the module
    itself holds full weights. ``prefix`` strips the :class:`ForwardFn` level."""
    acc = run.accelerator
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if run.prepared is None or not (acc.distributed_type == DistributedType.FSDP or zero3):
        return None
    full = acc.get_state_dict(run.prepared)
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)} if run.is_main else None


def load_data(cfg, load: Callable, kind: str, with_eval: bool = True, **kw) -> tuple[list, list, list]:
    """(training examples, eval examples, [(field, LoadReport)]) as ``cfg`` says: ``data_split`` /
    ``eval_split`` (or ``SOURCE:SPLIT``) and ``on_bad_record``. ``kind`` (prefs, sft, gen) names the
    UltraFeedback-style fallbacks train_<kind> / test_<kind>; ``kw`` goes to ``load``."""
    train_splits = (cfg.data_split,) + ((f"train_{kind}",) if cfg.data_split == "train" else ())
    eval_splits = (cfg.eval_split,) if cfg.eval_split else ("test", "validation", f"test_{kind}")
    reports = [("data", LoadReport())]
    examples = load(cfg.data, train_splits, cfg.on_bad_record, reports[0][1], **kw)
    eval_examples = []
    if with_eval and cfg.eval_data:
        reports.append(("eval_data", LoadReport()))
        eval_examples = load(cfg.eval_data, eval_splits, cfg.on_bad_record, reports[1][1], **kw)
    return examples, eval_examples, reports


def note_data(run: Run, reports: list) -> None:
    """Print what each source read (split, rows, skipped records) and keep the figures for summary.json."""
    for name, report in reports:
        for line in report.describe(name):
            run.print(line)
    by_name = dict(reports)
    if "eval_data" in by_name and (by_name["data"].source, by_name["data"].split) == \
            (by_name["eval_data"].source, by_name["eval_data"].split):
        run.print("warning: eval_data reads the same rows as data: held-out figures will be training figures")
    run.notes.update({"data_split": by_name["data"].split}, **bad_record_summary(by_name.values()))
    if "eval_data" in by_name:
        run.notes["eval_split"] = by_name["eval_data"].split
