"""The one step driver every trainer uses, offline (``loop.train``) and online (PPO, RLOO, GRPO).

One optimiser step: :meth:`StepDriver.accumulate` runs a loss over micro-batches inside the
prepared model's forward (no gradient sync until the last one), :meth:`StepDriver.optimizer_step`
clips, applies the finite-value guard (a step whose guarded figures or gradient norm are not finite
is skipped and counted; ``max_bad_steps`` in a row stop the run naming the last good checkpoint),
steps the optimiser and the scheduler. :meth:`StepDriver.end_step` logs, evaluates and writes the
periodic checkpoint. A run starts with :meth:`StepDriver.start` (prepare, resume) and loops inside
:meth:`StepDriver.running` (the metrics log and progress bar).

Callbacks: :data:`callbacks` is a public list of :class:`StepCallback` objects the driver calls at
the start and end of every step and midway through every checkpoint write (as TRL's
``TrainerCallback``); the kill-and-resume tests install one that kills the process there.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..resources import state_bytes
from ..tracking import MetricsLogger
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .dcp import is_sharded_checkpoint, load_sharded, save_sharded
from .distributed import TrainingError, grad_norm, inner, is_sharded
from .fsdp import prepare


class StepCallback:
    """Override what you need. ``step`` is 0-based: the step about to run or just run."""

    def on_step_begin(self, step: int) -> None:
        """Before step ``step`` does anything."""

    def on_step_end(self, step: int, metrics: dict) -> None:
        """After step ``step`` is logged and checkpointed."""

    def on_save_partial(self, step: int) -> None:
        """Midway through writing the checkpoint after ``step`` steps (weights written, trainer state not)."""


callbacks: list[StepCallback] = []  # every driver calls these (read at each call)


@dataclass
class StepDriver:
    """One run's optimiser, scheduler, prepared model and step counters."""

    run: object
    model: object        # the accelerate-prepared ForwardFn
    optimizer: object
    scheduler: object
    total: int           # optimiser steps of the run (online: outer steps)
    progress_keys: tuple[str, ...] = ("loss",)
    state: dict = field(default_factory=lambda: {"bad_steps": 0, "skipped_steps": 0})
    logger: object = None
    bar: object = None

    @classmethod
    def start(cls, run, module, optimizer, scheduler, total: int, progress_keys=("loss",)) -> "StepDriver":
        """Prepare ``module`` and the optimiser; with ``resume``, restore the latest checkpoint."""
        model, optimizer = prepare(run, module, optimizer)
        run.prepared, run.optimizer = model, optimizer
        driver = cls(run, model, optimizer, scheduler, total, tuple(progress_keys))
        if run.cfg.resume:
            run.start_step = _resume(run, module, optimizer, scheduler, driver.state)
        return driver

    @property
    def module(self):
        """The trained module inside the prepared wrapper."""
        return inner(self.run, self.model)

    @contextmanager
    def running(self):
        """The steps still to run, with the metrics log and the progress bar open."""
        run, cfg = self.run, self.run.cfg
        self.logger = MetricsLogger(run.output_dir, cfg.report_to, run.is_main,
                                    resume_step=run.start_step if cfg.resume else None, run_name=f"rlhfkit-{run.stage}")
        self.bar = tqdm(total=self.total, initial=run.start_step, disable=not run.is_main, desc=run.stage,
                        dynamic_ncols=True)
        try:
            yield range(run.start_step, self.total)
            self.bar.close()
        finally:
            self.logger.close()

    def begin(self, step: int) -> None:
        for cb in callbacks:
            cb.on_step_begin(step)

    def accumulate(self, parts: Sequence, loss_of: Callable, load: Callable = lambda part: part) -> dict:
        """Backward of ``loss_of(module, load(part))`` for each part, inside the prepared model's
        forward; gradients sync on the last part only. Returns this process's summed metrics."""
        acc = self.run.accelerator
        world = acc.num_processes
        sums: dict[str, float] = {}
        for k, part in enumerate(parts):
            batch = load(part)
            sync = acc.no_sync(self.model) if k < len(parts) - 1 and world > 1 else nullcontext()
            with sync, acc.autocast():
                loss, metrics = self.model(loss_of, batch)
                # DDP averages gradients over processes; the loss is a share of the global sum.
                acc.backward(loss * world)
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v)
        return sums

    def optimizer_step(self, step: int, stats: dict, guard: Iterable[str] | None = None) -> None:
        """Clip and record ``grad_norm`` in ``stats``; step the optimiser unless the figures named in
        ``guard`` (every figure when None) or the gradient norm are not finite; step the scheduler."""
        stats["grad_norm"] = grad_norm(self.run.accelerator, self.model, self.run.cfg.max_grad_norm)
        keys = list(stats) if guard is None else [k for k in (*guard, "grad_norm") if k in stats]
        if all(math.isfinite(stats[k]) for k in keys):
            self.optimizer.step()
            self.state["bad_steps"] = 0
            if self.run.state_bytes is None:  # gradients and optimiser state both exist only here
                self.run.state_bytes = state_bytes(self.model, self.optimizer)
        else:
            self._skip_bad_step(step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _skip_bad_step(self, step: int) -> None:
        """A non-finite loss or gradient: drop this step's update, count it, stop after too many in a row."""
        state, limit = self.state, self.run.cfg.max_bad_steps
        state["bad_steps"] += 1
        state["skipped_steps"] += 1
        self.run.print(f"step {step + 1}: non-finite loss or gradient; update skipped "
                       f"({state['bad_steps']} in a row, limit {limit})")
        if state["bad_steps"] >= limit:
            good = latest_checkpoint(self.run.output_dir)
            where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
            raise TrainingError(f"stopped at step {step + 1}: {state['bad_steps']} consecutive steps had a "
                                f"non-finite loss or gradient (lower learning_rate, check the data); {where}")

    def end_step(self, done: int, metrics: dict, evaluate: Callable[[], dict] | None = None,
                 save_state: Callable[[], dict] | None = None) -> None:
        """After ``done`` steps: log (every ``logging_steps`` and at the end), evaluate (every
        ``eval_steps``), write a checkpoint (every ``save_steps``; ``save_state`` adds the recipe's
        state to it), advance the progress bar, call the callbacks."""
        cfg, last = self.run.cfg, done == self.total
        if done % cfg.logging_steps == 0 or last:
            self.logger.log(done, metrics)
        if evaluate and getattr(cfg, "eval_steps", 0) and done % cfg.eval_steps == 0 and not last:
            self.logger.log(done, evaluate())
        if cfg.save_steps and done % cfg.save_steps == 0 and not last:
            if save_state is not None:
                self.state.update(save_state())
            save = save_sharded if is_sharded(self.run) else save_checkpoint  # FSDP2: every process writes
            save(self.run, self.module, self.optimizer, self.scheduler, done, self.state,
                 midway=lambda: [cb.on_save_partial(done) for cb in callbacks])
        self.bar.update(1)
        self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in self.progress_keys if k in metrics})
        for cb in callbacks:
            cb.on_step_end(done - 1, metrics)


def _resume(run, module, optimizer, scheduler, state: dict) -> int:
    """Restore the newest checkpoint (sharded under FSDP2, whole otherwise); the step to go on from."""
    ckpt = latest_checkpoint(run.output_dir)
    if ckpt is None or not (is_sharded(run) or is_sharded_checkpoint(ckpt)):
        return load_checkpoint(run, module, optimizer, scheduler, state)
    if is_sharded(run) != is_sharded_checkpoint(ckpt):
        written, now = ("with", "without") if is_sharded_checkpoint(ckpt) else ("without", "with")
        raise TrainingError(f"resume: {ckpt} was written {written} FSDP sharding and this run is {now} it; "
                            "resume with the engine and process count that wrote it")
    return load_sharded(run, module, optimizer, scheduler, state, ckpt)
