"""The building blocks of an online step, shared by PPO, RLOO and GRPO: sample the policy, score
the samples, compute the reference log-probs and the per-token KL (:func:`collect`), summarise
them (:func:`experience_metrics`), and place the KL penalty (:class:`KLPenalty`, the one place
that reads ``kl_in``).

Simplifications, on purpose: the log-probs the sampler returned are the "old" log-probs of the
ratio (no second forward pass; the sampler's log-probs equal a fresh forward pass's, which
tests/unit/test_generation.py checks). Log-probs use the sampling temperature throughout. Policy
and reference log-probs are computed on packed rows with the LM head at response positions only
(``logprobs.response_logprobs``) where the models allow it.
Sampling is seeded by (seed, step, rank), so a resumed run draws exactly what the uninterrupted
run drew. Each process takes a contiguous share of the step's ``batch_size`` prompts (whole
prompts, so all ``num_generations`` completions of a prompt, and hence RLOO/GRPO group
baselines, stay on one process).
"""

from __future__ import annotations

import hashlib

import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import TrainerState

from ..logprobs import response_logprobs
from ..losses import kl_estimate, masked_mean, masked_sum, row_chunks
from ..models import adapter_disabled
from ..rewards import RewardFunctionError, completion_ids
from ..sampling import generate, rollout_rows
from .distributed import TrainingError, mean_over_processes, my_share, step_indices
from .fsdp import gathered


@dataclass
class Experience:
    """One step's samples, as right-padded prompt+response rows. Per-token tensors are in the
    shifted layout (B, T-1): position t holds what concerns token t+1."""

    input_ids: torch.Tensor        # (N, T)
    attention_mask: torch.Tensor   # (N, T)
    mask: torch.Tensor             # (N, T-1) float: 1 where token t+1 is a response token
    old_logp: torch.Tensor         # (N, T-1) sampler log-probs
    ref_logp: torch.Tensor | None  # (N, T-1); None when no reference runs (kl_coef 0: online.needs_reference)
    kl: torch.Tensor               # (N, T-1) per-token KL estimate (configured estimator); 0 without a reference
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


def last_token_onehot(mask_BT: torch.Tensor) -> torch.Tensor:
    """1 at each row's last response position (shifted layout), 0 elsewhere."""
    idx = torch.arange(mask_BT.shape[1], device=mask_BT.device).expand_as(mask_BT)
    last = (idx * mask_BT).argmax(dim=1, keepdim=True)
    return torch.zeros_like(mask_BT).scatter_(1, last, 1.0) * (mask_BT.sum(1, keepdim=True) > 0)


def sequence_kl(exp: Experience) -> torch.Tensor:
    """(N,) summed per-token KL of each response."""
    return masked_sum(exp.kl, exp.mask, dim=1)


@dataclass
class KLPenalty:
    """The KL to the reference with this step's coefficient, where ``kl_in`` puts it: into the
    reward (``reward``: -coef x KL, per token or summed per sequence) or into the loss (``loss``:
    + coef x the token-mean KL estimate of the current policy). The one place that reads ``kl_in``."""

    coef: float
    kl_in: str
    estimator: str

    def token_rewards(self, exp: Experience) -> torch.Tensor:
        """(N, T-1) the per-token reward penalty (zeros when the KL goes into the loss)."""
        return -self.coef * exp.kl if self.kl_in == "reward" else torch.zeros_like(exp.kl)

    def sequence_rewards(self, exp: Experience) -> torch.Tensor:
        """(N,) score, with the summed KL penalty folded in when it goes into the reward."""
        return exp.scores - self.coef * sequence_kl(exp) if self.kl_in == "reward" else exp.scores

    def loss_term(self, logp, ref_logp, mask) -> tuple[torch.Tensor | None, float]:
        """(coef x token-mean KL estimate, the estimate) when the KL goes into the loss, else (None, 0)."""
        if self.kl_in != "loss" or ref_logp is None:
            return None, 0.0
        kl_loss = masked_mean(kl_estimate(logp, ref_logp, self.estimator), mask)
        return self.coef * kl_loss, kl_loss.item()


def sequence_advantage_metrics(exp: Experience, rewards: torch.Tensor, adv: torch.Tensor) -> dict:
    """RLOO's and GRPO's figures of one step: (N,) sequence ``rewards`` and advantages ``adv``.
    nanmean: a completion no reward source scored (NaN) is left out; its advantage is 0."""
    return {"total_reward": float(rewards.nanmean()), "non_score_reward": float((rewards - exp.scores).nanmean()),
            "advantage_std": float(adv.std())}


@torch.no_grad()
def entropy(logits_NV: torch.Tensor) -> float:
    """Mean entropy of the (N, V) logits of the response positions (the only ones computed), a
    cache-sized block of rows at a time on the CPU (``losses.row_chunks``: 2.5x faster there)."""
    total = logits_NV.new_zeros((), dtype=torch.float32)
    for rows in row_chunks(logits_NV):
        logp_nV = torch.log_softmax(logits_NV[rows].float(), -1)
        total += (logp_nV.exp() * logp_nV).sum()
    return float(-total / max(logits_NV.shape[0], 1))


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


def seeded(seed: int, step: int, salt: int, device="cpu", rank: int = 0) -> torch.Generator:
    """A generator for (seed, step, salt, rank): rank 0 draws as a single process does."""
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + step * 7_919 + salt + rank * 15_485_863) % 2**63)


def row_generators(seed: int, step: int, prompt_idx: list[int]) -> list[torch.Generator]:
    """One CPU generator per sampled row, keyed by (seed, step, prompt, copy): a row draws the same
    tokens whichever process samples it and whatever else is in its batch, so N processes sample
    what 1 process does (the per-process stream of ``seeded`` would not)."""
    copies: dict[int, int] = {}
    out = []
    for i in prompt_idx:
        g = copies[i] = copies.get(i, -1) + 1
        key = hashlib.blake2b(f"{seed}:{step}:{i}:{g}".encode(), digest_size=8).digest()
        out.append(torch.Generator().manual_seed(int.from_bytes(key, "little") % 2**63))
    return out


def score(eng, prompt_idx: list[int], texts: list[str], ended: torch.Tensor,
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
def collect(eng, step: int, values: Callable | None = None) -> Experience:
    """Sample this process's share of step ``step``'s prompts, score the samples, compute reference
    log-probs and KL, and with ``values(module, ids, attn)`` the critic's values. Under FSDP2 the
    trained module's parameters are gathered once for all of it (``fsdp.gathered``)."""
    with gathered(eng.model):
        return _collect(eng, step, values)


def _collect(eng, step: int, values: Callable | None) -> Experience:
    cfg, run = eng.run.cfg, eng.run
    indices = my_share(run, step_indices(step, len(eng.prompts), cfg.batch_size, eng.steps_per_epoch, cfg.seed))
    prompt_idx = [i for i in indices for _ in range(cfg.num_generations)]
    rows = [eng.prompt_row(i) for i in prompt_idx]
    t0 = eng.step_start = time.perf_counter()
    with run.accelerator.autocast():  # rollouts compute as training does: bf16 on a GPU, fp32 on the CPU
        rollout = generate(eng.policy, eng.tokenizer, rows, cfg,
                           generator=row_generators(cfg.seed, step, prompt_idx),
                           batch_size=max(len(rows), 1))
    t1 = time.perf_counter()
    state = TrainerState(global_step=step, max_steps=eng.max_steps, epoch=step / max(eng.steps_per_epoch, 1))
    raw, scores = score(eng, prompt_idx, rollout.texts, rollout.ended,
                        completion_ids(rollout.response_ids, rollout.mask), state)
    t2 = time.perf_counter()
    ids, attn, mask, old = rollout_rows(rows, rollout, eng.tokenizer.pad_token_id)
    dev = run.device
    ids, attn, mask, old = ids.to(dev), attn.to(dev), mask.to(dev), old.to(dev)
    ref_logp, kl = None, torch.zeros_like(old)
    if eng.ref is not None:
        # a LoRA policy as its own reference; inference_mode: each op skips the autograd dispatch
        # layer, and the result is copied out (an inference tensor cannot enter the KL loss's graph)
        with run.accelerator.autocast(), adapter_disabled(eng.ref), torch.inference_mode():
            ref_logp = response_logprobs(eng.ref, ids, attn, mask, cfg.temperature, eng.pack, eng.share)[0].float()
        ref_logp = ref_logp.clone()
        kl = kl_estimate(old, ref_logp, cfg.kl_estimator) * mask
    exp = Experience(ids, attn, mask, old, ref_logp, kl, scores.to(dev), raw.to(dev), rollout.ended.to(dev),
                     rollout.texts, all_sum=eng.all_sum)
    t3 = time.perf_counter()
    if values is not None:
        eng.model.eval()
        with run.accelerator.autocast():
            exp.values = eng.model(lambda module: values(module, ids, attn)).float() * mask
    # generation / reward scoring / reference forward / critic forward; training is timed by `update`
    eng.timings = {"time_generation": t1 - t0, "time_scoring": t2 - t1, "time_reference": t3 - t2,
                   "time_values": time.perf_counter() - t3, "time_collect": time.perf_counter() - t0}
    return exp


def experience_metrics(eng, exp: Experience, step: int) -> dict:
    """Per-sample figures of every process's samples (gathered), then their means; warns once when
    no reward source scored some completions."""
    acc = eng.run.accelerator
    ref = exp.ref_logp if exp.ref_logp is not None else exp.old_logp  # no reference: KL figures not logged
    k1 = masked_sum(exp.old_logp - ref, exp.mask, dim=1)
    k3 = masked_sum(kl_estimate(exp.old_logp, ref, "k3"), exp.mask, dim=1)
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
    if exp.ref_logp is None:
        for key in ("kl", "kl_k1", "kl_k3"):
            del metrics[key]
    parts = getattr(eng.reward, "last_parts", {})
    if len(parts) > 1:
        metrics.update(mean_over_processes(acc, {f"reward/{k}": v for k, v in parts.items()}))
    if eng.heldout is not None:
        metrics.update(mean_over_processes(acc, {"heldout_reward": eng.heldout_reward}))
    if metrics["unscored"] and not eng.unscored_warned:
        eng.unscored_warned = True
        eng.run.print(f"warning: step {step + 1}: no reward source scored {metrics['unscored']:.0%} of the "
                      "completions (every function returned None): they get advantage 0 and are left out of "
                      "the baselines and of `reward` (logged: `unscored`)")
    return metrics
