"""What an online RL run (PPO, RLOO, GRPO) holds and does around its step: load the models and the
reward (:func:`start_online`), ``ppo_epochs`` passes of PPO-clip updates over mini-batches through
the step driver (:func:`update`), the end of a step (:func:`end_step`: KL controller, divergence
monitor, log, checkpoint) and the final write (:func:`finish_online`). Each recipe's ``run_x`` is
the loop: collect -> rewards/advantages -> update -> end_step (``rollout`` has the collection).

Data parallel (``torchrun`` / ``accelerate launch``): ``mini_batch_size`` counts sequences across
all processes; each process updates on its share of it. The token-mean loss divides by the
mini-batch's token count summed over processes, so the gradient DDP averages is the 1-process
gradient of the same samples. PPO whitens advantages and ``normalize_reward`` tracks moments over
all processes' samples; logged metrics are global (per-sample ones gathered, loss statistics
summed, algorithm figures averaged over processes); timings are the main process's. Mini-batch
order is seeded by (seed, step), so a resumed run updates exactly as the uninterrupted run did.
With LoRA (``lora_r > 0``) and no separate ``ref_model``, the reference is the policy with its
adapter switched off (``models.adapter_disabled``): no second copy loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..data import load_prompts
from ..data.tokenize import prompt_ids
from ..kl import make_kl_controller
from ..logprobs import packing_works, prompt_sharing_works, response_logprobs
from ..losses import ppo_policy_loss
from ..models import load_causal_lm
from ..resources import keep_freed_memory
from ..rewards import make_reward
from .checkpoint import finish, full_state_dict, on_main
from .distributed import (TrainingError, all_sum, batch_plan, gather, inner, mean_over_processes,
                          partial_batch_note, reduce_sums)
from .loop import (Run, attention_kwargs, checked_tokenizer, load_trained_model, make_optimizer, open_run, rates,
                   throughput)
from .rollout import Experience, KLPenalty, RunningMoments, entropy, seeded
from .step import StepDriver


@dataclass
class Engine:
    """Everything one online run holds."""

    run: Run
    driver: StepDriver
    tokenizer: object
    policy: torch.nn.Module         # the sampled policy (inside the trained module: PPO's ActorCritic.policy)
    ref: torch.nn.Module | None     # None at kl_coef 0 (``needs_reference``): neither loaded nor run
    reward: object
    prompts: list
    kl_ctl: object
    moments: RunningMoments
    timings: dict = field(default_factory=dict)
    heldout: object = None          # held-out reward source: scored and logged, never optimised
    monitor: object = None          # stats.DivergenceMonitor when `heldout` is set
    heldout_reward: float = 0.0     # this step's mean held-out reward
    pack: bool = False  # policy and reference compute packed rows like padded ones (logprobs.packing_works)
    share: bool = False  # ... and prompt-shared rows like plain ones (logprobs.prompt_sharing_works)
    max_steps: int = 0              # the run's steps and steps per epoch: the reward functions' trainer_state
    steps_per_epoch: int = 0
    unscored_warned: bool = False   # the "no source scored a completion" warning is printed once
    step_start: float = 0.0          # when this step's collection began (rollout.collect sets it)
    tokens_seen: int = 0             # real tokens (prompt + response) and completions of every process so far
    samples_seen: int = 0
    prompt_rows: dict = field(default_factory=dict)  # prompt index -> its token ids, tokenised when first sampled
    last: dict = field(default_factory=dict)     # the last step's metrics and samples, for summary.json
    samples: list = field(default_factory=list)

    def prompt_row(self, i: int) -> list[int]:
        """Prompt ``i``'s token ids (its last ``max_prompt_length``), tokenised the first time it is
        sampled (as TRL tokenises each batch): a run of a few steps over a large prompt set does not
        tokenise all of it first."""
        if i not in self.prompt_rows:
            self.prompt_rows[i] = prompt_ids(self.tokenizer, self.prompts[i].prompt)[-self.run.cfg.max_prompt_length:]
        return self.prompt_rows[i]

    @property
    def model(self):
        """The prepared (wrapped) trained module."""
        return self.driver.model

    @property
    def module(self):
        """The trained module (policy, or PPO's policy + critic) inside the prepared wrapper."""
        return inner(self.run, self.model)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_sum(self.run.accelerator, t)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return gather(self.run.accelerator, t)

    def kl_penalty(self) -> KLPenalty:
        """This step's KL penalty: the controller's coefficient, placed as ``kl_in`` says."""
        return KLPenalty(self.kl_ctl.value, self.run.cfg.kl_in, self.run.cfg.kl_estimator)


def _check_online_engine(run: Run, cfg) -> None:
    """What the online engine cannot run under, said before any model is loaded."""
    world = run.accelerator.num_processes
    if cfg.mini_batch_size % world:  # counts sequences across processes: each takes an equal share
        raise TrainingError(f"mini_batch_size {cfg.mini_batch_size} is not divisible by the {world} processes: "
                            f"mini_batch_size is global (split evenly across processes); use a multiple of {world}")


def needs_reference(cfg) -> bool:
    """Whether the run uses the reference model: a KL penalty (``kl_coef`` > 0 or an adaptive
    ``kl_target``) or the KL figures asked for (``log_kl``). At ``kl_coef: 0`` (TRL GRPO's default
    beta) it is neither loaded nor run: one model's memory and one forward pass per step saved."""
    return cfg.kl_coef > 0 or cfg.kl_target > 0 or cfg.log_kl


def _load_models(cfg, run: Run, prompts: list, build_model: Callable) -> tuple:
    """(tokenizer, policy, reference or None, reward, trained module) on the run's device."""
    tokenizer = checked_tokenizer(cfg, prompts)
    policy = load_trained_model(cfg, run)
    if not needs_reference(cfg):
        ref = None
    elif cfg.lora_r > 0 and cfg.ref_model in ("", cfg.model):
        ref = policy  # the starting weights = the policy with its adapter switched off
    else:
        ref = load_causal_lm(cfg.ref_model or cfg.model, dtype=run.dtype, trust_remote_code=cfg.trust_remote_code,
                             allow_pickle=cfg.allow_pickle, **attention_kwargs(run.device, run.dtype)
                             ).to(run.device).eval().requires_grad_(False)
    reward = make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, run.device, cfg.trust_remote_code)
    module = build_model(policy, run).to(run.device)
    return tokenizer, policy, ref, reward, module


def models_to_check(policy: torch.nn.Module, ref: torch.nn.Module | None) -> list[torch.nn.Module]:
    """The models the start-up equality checks (``logprobs.packing_works``, ``prompt_sharing_works``)
    run on: the policy, and the reference unless it is the policy itself (LoRA) or the same class
    with the same config, dtype and device (the reference loaded from the policy's folder). The
    checks test the model's code paths on fixed tokens, so such a reference passes exactly when
    the policy does; skipping it saves two checks (~30 ms) of every run's timed start."""
    if ref is None or ref is policy:
        return [policy]
    p, r = next(policy.parameters()), next(ref.parameters())
    same = (type(ref) is type(policy) and (p.dtype, p.device) == (r.dtype, r.device)
            and getattr(ref, "config", None) is not None and hasattr(policy, "config")
            and ref.config.to_dict() == policy.config.to_dict()
            and getattr(ref.config, "_attn_implementation", None) == getattr(policy.config, "_attn_implementation", None))
    return [policy] if same else [policy, ref]


def start_online(cfg, stage: str, build_model: Callable = lambda policy, run: policy) -> Engine:
    """Load data, models and reward; prepare the trained module (``build_model(policy, run)``: the
    policy itself, or PPO's policy + critic) and its optimiser; resume when asked."""
    if cfg.temperature <= 0:
        raise ValueError("online RL samples from the policy: temperature must be > 0")
    run, prompts, _ = open_run(cfg, stage, load_prompts, "gen", with_eval=False)
    _check_online_engine(run, cfg)
    if run.device.type == "cpu":  # a step's tensors reuse freed pages, not fresh ones (resources.keep_freed_memory)
        keep_freed_memory()
    tokenizer, policy, ref, reward, module = _load_models(cfg, run, prompts, build_model)
    run.start_clock()
    steps_per_epoch, total, _ = batch_plan(len(prompts), cfg, run.accelerator.num_processes)
    if partial_batch_note(len(prompts), cfg.batch_size):
        run.print(partial_batch_note(len(prompts), cfg.batch_size))
    mini = cfg.mini_batch_size or cfg.batch_size * cfg.num_generations
    updates_per_step = cfg.ppo_epochs * -(-cfg.batch_size * cfg.num_generations // mini)
    optimizer, scheduler = make_optimizer(module, cfg, total * updates_per_step)
    driver = StepDriver.start(run, module, optimizer, scheduler, total, progress_keys=("reward", "kl"))
    state = driver.state
    kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target or None, cfg.kl_horizon)
    if cfg.resume:
        kl_ctl.load_state_dict(state.get("kl_controller", kl_ctl.state_dict()))
    checked = models_to_check(policy, ref)
    with run.accelerator.autocast():  # the equality checks compute as the run will (bf16 on a GPU)
        pack = all(packing_works(m) for m in checked)
        share = cfg.share_prompts and cfg.num_generations > 1 and all(prompt_sharing_works(m) for m in checked)
    eng = Engine(run, driver, tokenizer, policy, ref, reward, prompts, kl_ctl, RunningMoments(state),
                 pack=pack, share=share, max_steps=total, steps_per_epoch=steps_per_epoch)
    if cfg.heldout_reward_model or cfg.heldout_reward_fn:
        from ..stats import DivergenceMonitor

        eng.heldout = make_reward(cfg.heldout_reward_model, cfg.heldout_reward_fn, [], run.device, cfg.trust_remote_code)
        eng.monitor = DivergenceMonitor(cfg.overopt_window, cfg.overopt_z, state.get("overopt"))
    return eng


def update(eng: Engine, exp: Experience, step: int, kl: KLPenalty, value_loss: Callable | None = None) -> dict:
    """``ppo_epochs`` passes of clipped-surrogate updates over mini-batches of the experience, each
    an optimiser step of the step driver; ``value_loss(module, part)`` adds PPO's critic loss.

    Each process holds its share of the step's sequences and updates on ``mini_batch_size /
    processes`` of them per optimiser step. Loss statistics are summed over processes per
    mini-batch (each micro-batch's share is of the global token count), so they are global means.
    """
    cfg, acc = eng.run.cfg, eng.run.accelerator
    world, n = acc.num_processes, len(exp)
    mini = (cfg.mini_batch_size or n * world) // world
    micro = min(cfg.micro_batch_size or mini, mini)
    sums: dict[str, float] = {}
    updates = 0
    t0 = time.perf_counter()
    eng.model.train()
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=seeded(cfg.seed, step, 100 + epoch, rank=acc.process_index)).tolist()
        for start in range(0, n, mini):
            idx = order[start:start + mini]
            tokens = float(eng.all_sum(exp.mask[idx].sum()).clamp(min=1))
            parts = [idx[m:m + micro] for m in range(0, len(idx), micro)]
            stats = eng.driver.accumulate(
                parts, lambda module, part: micro_loss(eng, module, exp, part, tokens, kl, value_loss))
            stats = reduce_sums(acc, stats)
            eng.driver.optimizer_step(step, stats, guard=None)  # every statistic must be finite
            updates += 1
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + v
    eng.timings["time_training"] = time.perf_counter() - t0
    return {k: v / updates for k, v in sums.items()}


def micro_loss(eng: Engine, module, exp: Experience, part: list[int], tokens: float, kl: KLPenalty,
               value_loss: Callable | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of a micro-batch as its share of the mini-batch's token mean, and its statistics.
    ``module`` is the trained module, reached through the prepared model's forward."""
    cfg = eng.run.cfg
    ids, attn, mask = exp.input_ids[part], exp.attention_mask[part], exp.mask[part]
    share = float(mask.sum()) / tokens
    # a checkpointed layer drops its KV cache in a training forward: no prompt sharing there
    logp, logits = response_logprobs(eng.policy, ids, attn, mask, cfg.temperature, eng.pack,
                                     eng.share and not cfg.gradient_checkpointing)
    pg_loss, clip_frac, approx_kl = ppo_policy_loss(logp, exp.old_logp[part], exp.advantages[part], mask, cfg.cliprange)
    loss = pg_loss
    stats = {"policy_loss": pg_loss.item() * share, "clip_frac": float(clip_frac) * share,
             "approx_kl": float(approx_kl) * share, "entropy": entropy(logits) * share}
    kl_term, kl_loss = kl.loss_term(logp, None if exp.ref_logp is None else exp.ref_logp[part], mask)
    if kl_term is not None:
        loss = loss + kl_term
        stats["kl_loss"] = kl_loss * share
    if value_loss is not None:
        v_loss, v_stats = value_loss(module, torch.tensor(part))
        loss = loss + cfg.vf_coef * v_loss
        stats.update({k: v * share for k, v in v_stats.items()})
    stats["loss"] = loss.item() * share
    return loss * share, stats


def end_step(eng: Engine, step: int, exp: Experience, metrics: dict) -> None:
    """After step ``step``'s update: timings and counters, the KL controller, the divergence test,
    then the driver's log / checkpoint (with the KL controller, reward moments and test history)."""
    run, driver = eng.run, eng.driver
    ntok, nsamples = int(eng.all_sum(exp.attention_mask.sum())), len(exp) * run.accelerator.num_processes
    eng.tokens_seen, eng.samples_seen = eng.tokens_seen + ntok, eng.samples_seen + nsamples
    metrics.update(eng.timings, lr=driver.scheduler.get_last_lr()[0], skipped_steps=driver.state["skipped_steps"],
                   **throughput(run, ntok, nsamples, time.perf_counter() - eng.step_start))
    eng.kl_ctl.update(metrics.get("kl", 0.0), len(exp) * run.accelerator.num_processes)  # no "kl" at kl_coef 0
    if eng.monitor is not None:
        _check_overoptimisation(eng, metrics, step + 1)
    eng.last, eng.samples = metrics, exp.texts[:4]

    def save_state() -> dict:
        state = dict(kl_controller=eng.kl_ctl.state_dict(), **eng.moments.state())
        if eng.monitor is not None:  # the divergence test's history, so a resumed run tests the same windows
            state["overopt"] = eng.monitor.state()
        return state

    driver.end_step(step + 1, metrics, save_state=save_state)


def _check_overoptimisation(eng: Engine, metrics: dict, step: int) -> None:
    """Log the divergence test; print a warning when it starts to fire (not every step it holds)."""
    was = bool(eng.monitor.warned_at) and eng.monitor.warned_at[-1] == step - 1
    metrics.update(eng.monitor.update(metrics["reward"], metrics["heldout_reward"]))
    if metrics["overopt_warning"] and not was:
        eng.run.print(f"warning: step {step}: the training reward rose ({metrics['overopt_z_train']:+.1f} s.e. over "
                      f"the last {eng.monitor.window} steps) while the held-out reward fell "
                      f"({metrics['overopt_z_heldout']:+.1f} s.e.): the policy may be over-optimising the reward "
                      "model; consider a larger kl_coef or an earlier checkpoint")


def finish_online(eng: Engine, save_extra: Callable[[Run, torch.nn.Module, dict | None], None] | None = None) -> dict:
    """summary.json and the final policy folder; ``save_extra(run, module, full)`` writes e.g. PPO's
    critic (``full``: the trained module's gathered state dict under FSDP2, else None)."""
    run = eng.run
    seconds = time.perf_counter() - run.clock_start
    summary = {"stage": run.stage, "steps": eng.max_steps, "train_seconds": round(seconds, 3),
               "resumed_from_step": run.start_step, "skipped_steps": eng.driver.state["skipped_steps"],
               "train": eng.last, "final_kl_coef": eng.kl_ctl.value, "samples": eng.samples,
               **rates(eng.tokens_seen, eng.samples_seen, seconds),
               "reference_loaded": eng.ref is not None and eng.ref is not eng.policy,
               "parameters_held": held_parameters(eng)}
    if eng.monitor is not None:  # steps (1-based, this process's run) where the divergence test fired
        summary["overopt_warning_steps"] = list(eng.monitor.warned_at)
    full = full_state_dict(run, eng.module) if save_extra is not None else None  # a collective under FSDP2
    on_main(run, lambda: save_extra(run, eng.module, full) if save_extra is not None else None)
    return finish(run, eng.policy, eng.tokenizer, summary)


def held_parameters(eng: Engine) -> int:
    """Parameters this process holds in the trained module, the reference and a reward model
    (each tensor counted once: a LoRA reference is the policy itself)."""
    models = [eng.module, eng.ref] + [getattr(src, "model", None) for src in getattr(eng.reward, "sources", [])]
    seen = {id(p): p.numel() for m in models if isinstance(m, torch.nn.Module) for p in m.parameters()}
    return sum(seen.values())


def mean_of_processes(eng: Engine, figures: dict) -> dict:
    """An algorithm's per-process figures averaged over processes (the global means)."""
    return mean_over_processes(eng.run.accelerator, figures)
