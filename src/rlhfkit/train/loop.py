"""The training loop every offline recipe shares: batching, accumulation, logging, evaluation.

A recipe (sft.py, rm.py, dpo.py) loads its models and data, defines ``loss_fn`` for one
micro-batch and ``evaluate`` for the held-out set, and hands them to :func:`train`. The loop is
plain PyTorch on `accelerate` (device placement, DDP, autocast); no ``transformers.Trainer``.
Each optimiser step goes through the step driver (``step.StepDriver``: accumulation, clipping,
the non-finite guard, checkpoints), the same one the online trainers use.

Batching contract: ``batch_size`` examples per optimiser step across all processes, in
``micro_batch_size`` pieces per process (``distributed.batch_plan``). ``loss_fn`` gets the step's
total number of units (response tokens for SFT, pairs for RM/DPO) and divides its *sum* by it, so
4 x 2 accumulation, 1 x 8 and 2 processes x 4 all produce the same gradient. Metrics are summed
over processes; only the main process writes files.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import dump_config
from ..data import LoadReport
from ..data.tokenize import check_chat_template
from ..data.report import bad_record_summary
from ..models import (add_lora, check_model_path, enable_gradient_checkpointing, load_causal_lm, load_reward_model,
                      load_tokenizer, resolve_device, resolve_dtype)
from ..resources import peak_memory_bytes
from .distributed import batch_plan, my_share, partial_batch_note, reduce_sums, step_indices
from .step import StepDriver


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
    optimizer: Any = None  # its optimiser (for the per-rank state bytes in summary.json)
    engine: dict = field(default_factory=dict)  # which engine and sharding ran (fsdp.prepare)
    state_bytes: dict | None = None  # this rank's parameter/gradient/optimiser bytes after the first step

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
        model = load_causal_lm(path, **kw, **attention_kwargs(run.device, run.dtype))
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


def attention_kwargs(device: torch.device, dtype: torch.dtype) -> dict:
    """``from_pretrained``'s ``attn_implementation`` for a causal LM on this device: on CUDA with a
    bf16/fp16 compute dtype and the ``flash_attn`` package installed, FlashAttention-2 (packed rows,
    told apart by their position-id resets, then run through its varlen kernel); otherwise the
    model's default, SDPA where the model has it (packed rows get a block-diagonal mask built from
    the position ids). ``logprobs.packing_works`` checks either way, at start, that packed rows give
    the padded log-probs before a run packs."""
    import importlib.util

    if torch.device(device).type == "cuda" and dtype in (torch.bfloat16, torch.float16) \
            and importlib.util.find_spec("flash_attn") is not None:
        return {"attn_implementation": "flash_attention_2"}
    return {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- batching


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
    optimizer, scheduler = make_optimizer(task.model, cfg, total)
    driver = StepDriver.start(run, task.model, optimizer, scheduler, total, task.progress_keys)
    model, state = driver.model, driver.state
    last, tokens_seen, samples_seen = {}, 0, 0
    evaluate = (lambda: _evaluate(task, model)) if task.evaluate else None
    with driver.running() as steps:
        for step in steps:
            driver.begin(step)
            model.train()
            t0 = time.perf_counter()
            metrics, ntok, nsamples = _one_step(run, task, driver, step, steps_per_epoch, micro)
            tokens_seen, samples_seen = tokens_seen + ntok, samples_seen + nsamples
            metrics.update(lr=driver.scheduler.get_last_lr()[0], skipped_steps=state["skipped_steps"],
                           **throughput(run, ntok, nsamples, time.perf_counter() - t0))
            last = metrics
            done = step + 1
            # the data position, for the checkpoint
            driver.end_step(done, metrics, evaluate,
                            lambda: dict(zip(("epoch", "batch_in_epoch"), divmod(done, steps_per_epoch))))
        train_seconds = time.perf_counter() - run.clock_start
        final_eval = _evaluate(task, model) if task.evaluate else {}
        if final_eval:
            driver.logger.log(total, final_eval)
    return {"steps": total, "train_seconds": round(train_seconds, 3), "resumed_from_step": run.start_step,
            "skipped_steps": state["skipped_steps"], "train": last, **final_eval,
            **rates(tokens_seen, samples_seen, train_seconds)}


def rates(tokens: int, samples: int, seconds: float) -> dict:
    """``tokens_per_second`` and ``samples_per_second`` over ``seconds`` (every process's units)."""
    return {"tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "samples_per_second": round(samples / max(seconds, 1e-9), 3)}


def throughput(run: Run, tokens: int, samples: int, seconds: float) -> dict:
    """A step's figures: tokens/s (real, non-padding tokens), samples/s (examples; online: sampled
    completions), over every process, and this process's peak memory so far in MiB
    (``resources.peak_memory_bytes``: CUDA allocated on a GPU, peak RSS on the CPU)."""
    return {**rates(tokens, samples, seconds), "peak_memory_mib": round(peak_memory_bytes(run.device) / 2**20, 1)}


def _evaluate(task: Task, model) -> dict:
    """Every process evaluates the whole held-out set through the prepared model (identical
    figures everywhere, no reduction needed; under FSDP all processes must take part anyway)."""
    model.eval()
    with torch.no_grad():
        return model(task.evaluate)


def _one_step(run: Run, task: Task, driver: StepDriver, step: int, steps_per_epoch: int,
              micro: int) -> tuple[dict, int, int]:
    """Forward/backward over this process's micro-batches, then the driver's guarded optimiser step."""
    cfg = run.cfg
    indices = step_indices(step, len(task.examples), cfg.batch_size, steps_per_epoch, cfg.seed)
    units = float(sum(task.units(task.examples[i]) for i in indices))
    mine = my_share(run, indices)
    chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
    ntok = 0

    def load(chunk: list) -> dict:
        nonlocal ntok
        batch = to_device(task.collate([task.examples[i] for i in chunk]), run.device)
        ntok += int(batch["num_tokens"]) if "num_tokens" in batch else int(batch["attention_mask"].sum())
        return batch

    sums = driver.accumulate(chunks, lambda module, batch: task.loss_fn(module, batch, units), load)
    sums["_tokens"] = float(ntok)
    sums = reduce_sums(run.accelerator, sums)
    ntok = int(sums.pop("_tokens"))  # every process's tokens, for tokens_per_second
    for name, (num, den) in task.ratios.items():
        sums[name] = sums.pop(num) / max(sums.pop(den), 1.0)
    driver.optimizer_step(step, sums, guard=("loss",))
    return sums, ntok, len(indices)


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


def open_run(cfg, stage: str, load: Callable, kind: str, with_eval: bool = True, **kw) -> tuple[Run, list, list]:
    """The start every recipe shares: read the data (``load_data``), start the run, say what was read.
    Returns (run, training examples, eval examples)."""
    examples, eval_examples, reports = load_data(cfg, load, kind, with_eval, **kw)
    run = start_run(cfg, stage)
    note_data(run, reports)
    return run, examples, eval_examples


def checked_tokenizer(cfg, examples: list):
    """The model's tokenizer, after checking that chat-formatted ``examples`` have a chat template."""
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, field="model")
    check_chat_template(examples, tokenizer, cfg.data, cfg.model)
    return tokenizer


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
