"""The online RL engine PPO, RLOO and GRPO share: sample -> score -> advantages -> clipped updates.

Each step takes ``batch_size`` prompts, samples ``num_generations`` completions of each with the
KV-cache sampler, scores them with the reward sources, computes the reference log-probs and the
per-token KL, lets the algorithm turn that into advantages, then runs ``ppo_epochs`` passes of
PPO-clip updates over mini-batches. The algorithms differ only in :class:`Algorithm`'s hooks:

  PPO   per-token rewards (score at the last token, -kl_coef * KL per token), a critic, GAE.
  RLOO  one reward per sequence, baseline = the mean of the other completions of the prompt.
  GRPO  group-normalised rewards, KL as a loss term (k3).

Simplifications, on purpose: the log-probs the sampler returned are the "old" log-probs of the
ratio (no second forward pass; the sampler's log-probs equal a fresh forward pass's, which
tests/unit/test_generation.py checks). Log-probs use the sampling temperature throughout. Policy
and reference log-probs are computed on packed rows with the LM head at response positions only
(``generation.response_logprobs``) where the models allow it.
Sampling and mini-batch order are seeded by (seed, step), so a resumed run draws exactly what
the uninterrupted run drew.

Data parallel (``torchrun`` / ``accelerate launch``): each process takes a contiguous share of the
step's ``batch_size`` prompts (whole prompts, so all ``num_generations`` completions of a prompt,
and hence RLOO/GRPO group baselines, stay on one process), samples them with a generator seeded by
(seed, step, rank): distinct draws per process, reproduced on resume with the same process count.
``mini_batch_size`` counts sequences across all processes; each process updates on its share of
it. The token-mean loss divides by the mini-batch's token count summed over processes, so the
gradient DDP averages is the 1-process gradient of the same samples. PPO whitens advantages and
``normalize_reward`` tracks moments over all processes' samples; logged metrics are global
(per-sample ones gathered, loss statistics summed, algorithm figures averaged over processes);
timings are the main process's.
With LoRA (``lora_r > 0``) and no separate ``ref_model``, the reference
is the policy with its adapter switched off (``models.adapter_disabled``): no second copy loaded.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import TrainerState

from ..data import load_prompts
from ..data.tokenize import check_chat_template, prompt_ids
from ..kl import make_kl_controller
from ..logprobs import packing_works, prompt_sharing_works, response_logprobs
from ..losses import kl_estimate, masked_mean, masked_sum, ppo_policy_loss
from ..models import adapter_disabled, load_causal_lm, load_tokenizer
from ..rewards import RewardFunctionError, completion_ids, make_reward
from ..sampling import generate, rollout_rows
from ..tracking import MetricsLogger
from .loop import (Run, TrainingError, _fault_hook, _grad_norm, _reduce, _skip_bad_step, batch_plan, check_engine,
                   finish, inner, load_checkpoint, load_data, load_trained_model, make_optimizer, my_share, note_data,
                   on_main, partial_batch_note, prepare, save_checkpoint, start_run, step_indices)


@dataclass
class Experience:
    """One step's samples, as right-padded prompt+response rows. Per-token tensors are in the
    shifted layout (B, T-1): position t holds what concerns token t+1."""

    input_ids: torch.Tensor        # (N, T)
    attention_mask: torch.Tensor   # (N, T)
    mask: torch.Tensor             # (N, T-1) float: 1 where token t+1 is a response token
    old_logp: torch.Tensor         # (N, T-1) sampler log-probs
    ref_logp: torch.Tensor         # (N, T-1)
    kl: torch.Tensor               # (N, T-1) per-token KL estimate (configured estimator)
    scores: torch.Tensor           # (N,) reward after penalty/clip/normalisation
    raw_scores: torch.Tensor       # (N,) reward as the sources gave it
    ended: torch.Tensor            # (N,) bool
    texts: list[str]
    advantages: torch.Tensor | None = None   # (N, T-1)
    returns: torch.Tensor | None = None      # (N, T-1), PPO's value targets
    values: torch.Tensor | None = None       # (N, T-1), PPO's critic at sampling time
    # sums a tensor over data-parallel processes (identity on one): global whitening statistics
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Algorithm:
    """A recipe's side of the engine."""

    name: str
    advantages: Callable[[Experience, float], dict]           # fills exp.advantages (+returns); returns metrics
    build_model: Callable[[torch.nn.Module, Run], torch.nn.Module] = lambda policy, run: policy
    policy_of: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    values: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    value_loss: Callable[[torch.Tensor, Experience, torch.Tensor], tuple[torch.Tensor, dict]] | None = None
    save_extra: Callable[[Run, torch.nn.Module], None] = lambda run, model: None
    progress_keys: tuple[str, ...] = ("reward", "kl")


def last_token_onehot(mask_BT: torch.Tensor) -> torch.Tensor:
    """1 at each row's last response position (shifted layout), 0 elsewhere."""
    idx = torch.arange(mask_BT.shape[1], device=mask_BT.device).expand_as(mask_BT)
    last = (idx * mask_BT).argmax(dim=1, keepdim=True)
    return torch.zeros_like(mask_BT).scatter_(1, last, 1.0) * (mask_BT.sum(1, keepdim=True) > 0)


def sequence_kl(exp: Experience) -> torch.Tensor:
    """(N,) summed per-token KL of each response."""
    return masked_sum(exp.kl, exp.mask, dim=1)


@torch.no_grad()
def _entropy(logits_NV: torch.Tensor) -> float:
    """Mean entropy of the (N, V) logits of the response positions (the only ones computed)."""
    logp_NV = torch.log_softmax(logits_NV.float(), -1)
    return float(-(logp_NV.exp() * logp_NV).sum() / max(logp_NV.shape[0], 1))


class RunningMoments:
    """Running mean/std of scores (Chan et al. parallel update), for ``normalize_reward``."""

    def __init__(self, state: dict | None = None):
        self.count, self.mean, self.m2 = (state or {}).get("moments", (0, 0.0, 0.0))

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += var * n + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / max(self.count - 1, 1)) ** 0.5

    def state(self) -> dict:
        return {"moments": (self.count, self.mean, self.m2)}


@dataclass
class Engine:
    """Everything one online run holds."""

    run: Run
    algo: Algorithm
    tokenizer: object
    model: torch.nn.Module
    ref: torch.nn.Module
    reward: object
    prompts: list
    prompt_rows: list[list[int]]
    kl_ctl: object
    moments: RunningMoments
    timings: dict = field(default_factory=dict)
    heldout: object = None          # held-out reward source: scored and logged, never optimised
    monitor: object = None          # evaluate.overopt.DivergenceMonitor when `heldout` is set
    heldout_reward: float = 0.0     # this step's mean held-out reward
    pack: bool = False  # policy and reference compute packed rows like padded ones (models.packing_works)
    share: bool = False  # ... and prompt-shared rows like plain ones (shared_prompt.prompt_sharing_works)
    max_steps: int = 0              # the run's steps and steps per epoch: the reward functions' trainer_state
    steps_per_epoch: int = 0
    unscored_warned: bool = False   # the "no source scored a completion" warning is printed once

    @property
    def module(self):
        """The trained module (policy, or PPO's policy + critic) inside the prepared wrapper."""
        return inner(self.run, self.model)

    @property
    def policy(self):
        return self.algo.policy_of(self.module)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over processes (itself on one process), on ``t``'s device."""
        acc = self.run.accelerator
        return t if acc.num_processes == 1 else acc.reduce(t.to(acc.device), "sum").to(t.device)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` concatenated along dim 0 in rank order (the global batch order)."""
        acc = self.run.accelerator
        return t if acc.num_processes == 1 else acc.gather(t.contiguous().to(acc.device)).to(t.device)


def _seeded(seed: int, step: int, salt: int, device="cpu", rank: int = 0) -> torch.Generator:
    """A generator for (seed, step, salt, rank): rank 0 draws as a single process does."""
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + step * 7_919 + salt + rank * 15_485_863) % 2**63)


def _score(eng: Engine, prompt_idx: list[int], texts: list[str], ended: torch.Tensor,
           completion_ids: list[list[int]] | None = None, trainer_state=None) -> tuple:
    """(raw, scores), (N,) each: the sources' reward, then penalty, clip and normalisation. NaN marks a
    completion no source scored (functions returned None); it stays NaN (see ``losses.grpo_advantages``)."""
    cfg = eng.run.cfg
    prompts = [eng.prompts[i].prompt for i in prompt_idx]
    columns: dict[str, list] = {}
    for i in prompt_idx:
        for k, v in eng.prompts[i].extra.items():
            columns.setdefault(k, []).append(v)
    columns = {k: v for k, v in columns.items() if len(v) == len(prompt_idx)}
    kwargs = dict(columns, completion_ids=completion_ids, trainer_state=trainer_state)
    try:
        raw = eng.reward(prompts, texts, **kwargs).float()
        if eng.heldout is not None:
            eng.heldout_reward = float(eng.heldout(prompts, texts, **kwargs).float().nanmean())
    except RewardFunctionError as e:
        where = getattr(eng.prompts[prompt_idx[e.index]], "where", "") if e.index is not None else ""
        raise TrainingError(f"{e}" + (f" (its prompt: {where})" if where else "")) from e
    scores = raw.clone()
    if cfg.missing_eos_penalty:
        scores = scores - cfg.missing_eos_penalty * (~ended.cpu()).float()
    if cfg.reward_clip > 0:
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
    if cfg.normalize_reward:  # moments of every process's scores, so all processes normalise alike
        every = eng.gather(scores)
        if not every.isnan().all():
            eng.moments.update(every[~every.isnan()])
        scores = (scores - eng.moments.mean) / (eng.moments.std + 1e-8)
    return raw, scores


@torch.no_grad()
def collect(eng: Engine, step: int, indices: list[int]) -> Experience:
    """Sample, score and compute reference log-probs and KL for one step."""
    cfg, run = eng.run.cfg, eng.run
    prompt_idx = [i for i in indices for _ in range(cfg.num_generations)]
    rows = [eng.prompt_rows[i] for i in prompt_idx]
    t0 = time.perf_counter()
    rollout = generate(eng.policy, eng.tokenizer, rows, cfg,
                       generator=_seeded(cfg.seed, step, 1, run.device, run.accelerator.process_index),
                       batch_size=max(len(rows), 1))
    t1 = time.perf_counter()
    state = TrainerState(global_step=step, max_steps=eng.max_steps, epoch=step / max(eng.steps_per_epoch, 1))
    raw, scores = _score(eng, prompt_idx, rollout.texts, rollout.ended,
                         completion_ids(rollout.response_ids, rollout.mask), state)
    t2 = time.perf_counter()
    ids, attn, mask, old = rollout_rows(rows, rollout, eng.tokenizer.pad_token_id)
    dev = run.device
    ids, attn, mask, old = ids.to(dev), attn.to(dev), mask.to(dev), old.to(dev)
    with run.accelerator.autocast(), adapter_disabled(eng.ref):  # a LoRA policy as its own reference
        ref_logp = response_logprobs(eng.ref, ids, attn, mask, cfg.temperature, eng.pack, eng.share)[0].float()
    kl = kl_estimate(old, ref_logp, cfg.kl_estimator) * mask
    exp = Experience(ids, attn, mask, old, ref_logp, kl, scores.to(dev), raw.to(dev), rollout.ended.to(dev),
                     rollout.texts)
    t3 = time.perf_counter()
    if eng.algo.values is not None:
        eng.model.eval()
        with run.accelerator.autocast():
            exp.values = eng.model(lambda module: eng.algo.values(module, ids, attn)).float() * mask
    # generation / reward scoring / reference forward / critic forward; training is timed by the loop
    eng.timings = {"time_generation": t1 - t0, "time_scoring": t2 - t1, "time_reference": t3 - t2,
                   "time_values": time.perf_counter() - t3}
    return exp


def update(eng: Engine, exp: Experience, step: int, optimizer, scheduler, state: dict) -> dict:
    """``ppo_epochs`` passes of clipped-surrogate updates over mini-batches of the experience.

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
    eng.model.train()
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=_seeded(cfg.seed, step, 100 + epoch, rank=acc.process_index)).tolist()
        for start in range(0, n, mini):
            idx = order[start:start + mini]
            tokens = float(eng.all_sum(exp.mask[idx].sum()).clamp(min=1))
            parts = [idx[m:m + micro] for m in range(0, len(idx), micro)]
            stats: dict[str, float] = {}
            for k, part in enumerate(parts):
                sync = acc.no_sync(eng.model) if k < len(parts) - 1 and world > 1 else nullcontext()
                with sync, acc.autocast():
                    loss, mstats = eng.model(lambda module: _micro_loss(eng, module, exp, part, tokens))
                    acc.backward(loss * world)  # DDP averages over processes; the loss is a share of the sum
                for key, v in mstats.items():
                    stats[key] = stats.get(key, 0.0) + v
            stats = _reduce(acc, stats)
            stats["grad_norm"] = _grad_norm(acc, eng.model, cfg.max_grad_norm)
            if all(torch.isfinite(torch.tensor(v)) for v in stats.values()):
                optimizer.step()
                state["bad_steps"] = 0
            else:
                _skip_bad_step(eng.run, optimizer, step, state)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + v
    return {k: v / updates for k, v in sums.items()}


def _micro_loss(eng: Engine, module, exp: Experience, part: list[int], tokens: float) -> tuple[torch.Tensor, dict]:
    """Loss of a micro-batch as its share of the mini-batch's token mean, and its statistics.
    ``module`` is the trained module, reached through the prepared model's forward."""
    cfg = eng.run.cfg
    ids, attn, mask = exp.input_ids[part], exp.attention_mask[part], exp.mask[part]
    share = float(mask.sum()) / tokens
    # a checkpointed layer drops its KV cache in a training forward: no prompt sharing there
    logp, logits = response_logprobs(eng.algo.policy_of(module), ids, attn, mask, cfg.temperature, eng.pack,
                                     eng.share and not cfg.gradient_checkpointing)
    pg_loss, clip_frac, approx_kl = ppo_policy_loss(logp, exp.old_logp[part], exp.advantages[part], mask, cfg.cliprange)
    loss = pg_loss
    stats = {"policy_loss": pg_loss.item() * share, "clip_frac": float(clip_frac) * share,
             "approx_kl": float(approx_kl) * share, "entropy": _entropy(logits) * share}
    if cfg.kl_in == "loss":
        kl_loss = masked_mean(kl_estimate(logp, exp.ref_logp[part], cfg.kl_estimator), mask)
        loss = loss + eng.kl_ctl.value * kl_loss
        stats["kl_loss"] = kl_loss.item() * share
    if eng.algo.value_loss is not None:
        v_loss, v_stats = eng.algo.value_loss(module, exp, torch.tensor(part))
        loss = loss + cfg.vf_coef * v_loss
        stats.update({k: v * share for k, v in v_stats.items()})
    stats["loss"] = loss.item() * share
    return loss * share, stats


def _experience_metrics(eng: Engine, exp: Experience) -> dict:
    """Per-sample figures of every process's samples (gathered), then their means."""
    k1 = masked_sum(exp.old_logp - exp.ref_logp, exp.mask, dim=1)
    k3 = masked_sum(kl_estimate(exp.old_logp, exp.ref_logp, "k3"), exp.mask, dim=1)
    per_sample_N6 = torch.stack([exp.raw_scores.float(), sequence_kl(exp), k1, k3, exp.mask.sum(1),
                                 exp.ended.float()], dim=1)
    raw, seq_kl, k1, k3, length, ended = eng.gather(per_sample_N6).unbind(1)
    scored = raw[~raw.isnan()]  # a completion no reward source scored is left out, as in TRL
    metrics = {"reward": float(scored.mean()) if len(scored) else float("nan"),
               "reward_std": float(scored.std()) if len(scored) > 1 else 0.0,
               "unscored": float(raw.isnan().float().mean()),
               "kl": float(seq_kl.mean()), "kl_k1": float(k1.mean()), "kl_k3": float(k3.mean()),
               "kl_coef": eng.kl_ctl.value, "response_length": float(length.mean()),
               "eos_rate": float(ended.mean())}
    parts = getattr(eng.reward, "last_parts", {})
    if len(parts) > 1:
        metrics.update(_mean_over_processes(eng, {f"reward/{k}": v for k, v in parts.items()}))
    if eng.heldout is not None:
        metrics.update(_mean_over_processes(eng, {"heldout_reward": eng.heldout_reward}))
    return metrics


def _mean_over_processes(eng: Engine, figures: dict) -> dict:
    """Per-process means of equally many samples, averaged: the global means."""
    world = eng.run.accelerator.num_processes
    return {k: v / world for k, v in _reduce(eng.run.accelerator, {k: float(v) for k, v in figures.items()}).items()}


def _check_engine(run: Run, cfg) -> None:
    """What the online engine cannot run under, said before any model is loaded."""
    from accelerate.utils import DistributedType

    acc, world = run.accelerator, run.accelerator.num_processes
    n = cfg.batch_size * cfg.num_generations
    if cfg.mini_batch_size % world:  # counts sequences across processes: each takes an equal share
        raise TrainingError(f"mini_batch_size {cfg.mini_batch_size} is not divisible by the {world} processes: "
                            f"mini_batch_size is global (split evenly across processes); use a multiple of {world}")
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if acc.distributed_type == DistributedType.FSDP or zero3:
        raise TrainingError("online trainers (ppo, rloo, grpo) sample with the full policy on every process, which "
                            "FSDP and DeepSpeed ZeRO-3 shard: use DDP or DeepSpeed ZeRO-2")
    mini = (cfg.mini_batch_size or n) // world  # the offline loop's DeepSpeed limits, per mini-batch
    check_engine(run, mini, min(cfg.micro_batch_size or mini, mini))


def run_online(cfg, stage: str, algo: Algorithm) -> dict:
    """Load, then loop: collect -> advantages -> update -> log -> checkpoint."""
    prompts, _, reports = load_data(cfg, load_prompts, "gen", with_eval=False)
    if cfg.temperature <= 0:
        raise ValueError("online RL samples from the policy: temperature must be > 0")
    run = start_run(cfg, stage)
    note_data(run, reports)
    _check_engine(run, cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, field="model")
    check_chat_template(prompts, tokenizer, cfg.data, cfg.model)
    policy = load_trained_model(cfg, run)
    if cfg.lora_r > 0 and cfg.ref_model in ("", cfg.model):
        ref = policy  # the starting weights = the policy with its adapter switched off
    else:
        ref = load_causal_lm(cfg.ref_model or cfg.model, dtype=run.dtype, trust_remote_code=cfg.trust_remote_code,
                             allow_pickle=cfg.allow_pickle).to(run.device).eval().requires_grad_(False)
    reward = make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, run.device, cfg.trust_remote_code)
    model = algo.build_model(policy, run).to(run.device)
    run.start_clock()
    rows = [prompt_ids(tokenizer, p.prompt)[-cfg.max_prompt_length:] for p in prompts]
    steps_per_epoch, total, _ = batch_plan(len(prompts), cfg, run.accelerator.num_processes)
    if partial_batch_note(len(prompts), cfg.batch_size):
        run.print(partial_batch_note(len(prompts), cfg.batch_size))
    mini = cfg.mini_batch_size or cfg.batch_size * cfg.num_generations
    updates_per_step = cfg.ppo_epochs * -(-cfg.batch_size * cfg.num_generations // mini)
    optimizer, scheduler = make_optimizer(model, cfg, total * updates_per_step)
    module = model
    model, optimizer = prepare(run, module, optimizer)
    run.prepared = model
    state = {"bad_steps": 0, "skipped_steps": 0}
    kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target or None, cfg.kl_horizon)
    if cfg.resume:
        run.start_step = load_checkpoint(run, module, optimizer, scheduler, state)
        kl_ctl.load_state_dict(state.get("kl_controller", kl_ctl.state_dict()))
    eng = Engine(run, algo, tokenizer, model, ref, reward, prompts, rows, kl_ctl, RunningMoments(state),
                 pack=packing_works(policy) and packing_works(ref),
                 share=cfg.share_prompts and cfg.num_generations > 1 and prompt_sharing_works(policy)
                 and prompt_sharing_works(ref), max_steps=total, steps_per_epoch=steps_per_epoch)
    if cfg.heldout_reward_model or cfg.heldout_reward_fn:
        from ..stats import DivergenceMonitor

        eng.heldout = make_reward(cfg.heldout_reward_model, cfg.heldout_reward_fn, [], run.device, cfg.trust_remote_code)
        eng.monitor = DivergenceMonitor(cfg.overopt_window, cfg.overopt_z, state.get("overopt"))
    return _loop(eng, optimizer, scheduler, state, steps_per_epoch, total, policy)


def _check_overoptimisation(eng: Engine, metrics: dict, step: int) -> None:
    """Log the divergence test; print a warning when it starts to fire (not every step it holds)."""
    was = bool(eng.monitor.warned_at) and eng.monitor.warned_at[-1] == step - 1
    metrics.update(eng.monitor.update(metrics["reward"], metrics["heldout_reward"]))
    if metrics["overopt_warning"] and not was:
        eng.run.print(f"warning: step {step}: the training reward rose ({metrics['overopt_z_train']:+.1f} s.e. over "
                      f"the last {eng.monitor.window} steps) while the held-out reward fell "
                      f"({metrics['overopt_z_heldout']:+.1f} s.e.): the policy may be over-optimising the reward "
                      "model; consider a larger kl_coef or an earlier checkpoint")


def _loop(eng: Engine, optimizer, scheduler, state: dict, steps_per_epoch: int, total: int, policy) -> dict:
    from tqdm.auto import tqdm

    run, cfg = eng.run, eng.run.cfg
    logger = MetricsLogger(run.output_dir, cfg.report_to, run.is_main,
                           resume_step=run.start_step if cfg.resume else None, run_name=f"rlhfkit-{run.stage}")
    bar = tqdm(total=total, initial=run.start_step, disable=not run.is_main, desc=run.stage, dynamic_ncols=True)
    last: dict = {}
    samples: list[str] = []
    try:
        for step in range(run.start_step, total):
            _fault_hook(step)
            indices = step_indices(step, len(eng.prompts), cfg.batch_size, steps_per_epoch, cfg.seed)
            exp = collect(eng, step, my_share(run, indices))
            exp.all_sum = eng.all_sum
            metrics = _experience_metrics(eng, exp)
            if metrics["unscored"] and not eng.unscored_warned:
                eng.unscored_warned = True
                run.print(f"warning: step {step + 1}: no reward source scored {metrics['unscored']:.0%} of the "
                          "completions (every function returned None): they get advantage 0 and are left out of "
                          "the baselines and of `reward` (logged: `unscored`)")
            metrics.update(_mean_over_processes(eng, eng.algo.advantages(exp, eng.kl_ctl.value)))
            t0 = time.perf_counter()
            metrics.update(update(eng, exp, step, optimizer, scheduler, state))
            metrics.update(eng.timings, time_training=time.perf_counter() - t0, lr=scheduler.get_last_lr()[0],
                           skipped_steps=state["skipped_steps"])
            eng.kl_ctl.update(metrics["kl"], len(exp) * run.accelerator.num_processes)
            if eng.monitor is not None:
                _check_overoptimisation(eng, metrics, step + 1)
            last, done, samples = metrics, step + 1, exp.texts[:4]
            if done % cfg.logging_steps == 0 or done == total:
                logger.log(done, metrics)
            if cfg.save_steps and done % cfg.save_steps == 0 and done != total:
                state.update(kl_controller=eng.kl_ctl.state_dict(), **eng.moments.state())
                if eng.monitor is not None:  # the divergence test's history, so a resumed run tests the same windows
                    state["overopt"] = eng.monitor.state()
                save_checkpoint(run, eng.module, optimizer, scheduler, done, state)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in eng.algo.progress_keys if k in metrics})
        bar.close()
    finally:
        logger.close()
    summary = {"stage": run.stage, "steps": total, "train_seconds": round(time.perf_counter() - run.clock_start, 3),
               "resumed_from_step": run.start_step, "skipped_steps": state["skipped_steps"], "train": last,
               "final_kl_coef": eng.kl_ctl.value, "samples": samples}
    if eng.monitor is not None:  # steps (1-based, this process's run) where the divergence test fired
        summary["overopt_warning_steps"] = list(eng.monitor.warned_at)
    on_main(run, lambda: eng.algo.save_extra(run, eng.module))
    return finish(run, policy, eng.tokenizer, summary)
