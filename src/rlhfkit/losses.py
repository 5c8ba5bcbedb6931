"""Losses and estimators as pure tensor functions.

Nothing here knows about models, configs or trainers: every function takes tensors and
returns tensors, so each can be tested against numbers derived by hand (tests/unit/test_losses.py).

Shape suffixes: ``_B`` per sequence, ``_BT`` per token, ``_BTV`` per token over the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust", "hinge")
KL_ESTIMATORS = ("k1", "k2", "k3")


def masked_sum(x_BT: torch.Tensor, mask_BT: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1 (a mask of 0 drops the value even if it is inf or NaN)."""
    x = torch.where(mask_BT.bool(), x_BT, torch.zeros_like(x_BT))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    denom = mask_BT.sum() if dim is None else mask_BT.sum(dim)
    return masked_sum(x_BT, mask_BT, dim) / denom.clamp(min=1)


def token_logprobs(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position; logits and targets are already aligned (no shift here).

    Computed as logit[target] - logsumexp(logits): the same value as
    ``log_softmax(logits).gather(target)`` (tests/unit/test_losses.py checks it) without a second
    full-vocabulary (B, T, V) tensor in memory, the log-softmax output autograd would keep.
    Works for any leading shape, e.g. (N, V) logits of selected positions and (N,) targets.
    """
    logits = logits_BTV.float()
    if logits.requires_grad and torch.is_grad_enabled():
        return _TokenLogprobs.apply(logits, targets_BT)
    return logits.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1) - row_logsumexp(logits)


# Rows of a CPU (N, V) tensor taken at once by the row-wise passes below: 2**17 fp32 values (512 KiB)
# stay in a core's cache between passes, where a whole (N, V) tensor of a step (8 MiB for 1024 x
# 2007) goes out to memory between them (the passes 2-3x slower).
ROW_CHUNK = 2**17


def row_chunks(x_NV: torch.Tensor) -> list[slice]:
    """Slices of the rows of ``x_NV`` a CPU pass takes at once (one slice of all rows on other devices)."""
    n, v = x_NV.shape[0], max(x_NV.shape[-1], 1)
    rows = n if x_NV.device.type != "cpu" else max(1, ROW_CHUNK // v)
    return [slice(i, i + rows) for i in range(0, n, rows)] or [slice(0, 0)]


def row_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``x.logsumexp(-1)``, a cache-sized block of rows at a time on the CPU (each row's value is the
    same: the reduction runs along the row)."""
    if x.dim() != 2:
        return x.logsumexp(-1) if not x.is_contiguous() else row_logsumexp(x.view(-1, x.shape[-1])).view(x.shape[:-1])
    chunks = row_chunks(x)
    return x.logsumexp(-1) if len(chunks) == 1 else torch.cat([x[c].logsumexp(-1) for c in chunks])


class _TokenLogprobs(torch.autograd.Function):
    """``token_logprobs`` with a backward of three passes over the (..., V) logits where autograd
    takes six (a zero tensor and a scatter for the gather, then subtract, exp and multiply for the
    logsumexp, then their sum): d/dx [x_t - logsumexp(x)] = onehot(t) - softmax(x), written as
    -g * exp(x - lse) with g added at each target, a cache-sized block of rows at a time. The
    same products and sums as autograd's (floating-point addition commutes), so the gradient is
    the same, bit for bit (tests/unit/test_losses.py)."""

    @staticmethod
    def forward(ctx, logits, targets):
        lse = row_logsumexp(logits)
        ctx.save_for_backward(logits, lse, targets)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, lse, targets = ctx.saved_tensors
        V = logits.shape[-1]
        if logits.is_contiguous():
            x_NV, lse_N1, neg_N1 = logits.view(-1, V), lse.reshape(-1, 1), -grad.reshape(-1, 1)
            grad_NV = torch.empty_like(x_NV)
            for c in row_chunks(x_NV):
                torch.sub(x_NV[c], lse_N1[c], out=grad_NV[c]).exp_().mul_(neg_N1[c])
            grad_V = grad_NV.view(logits.shape)
        else:
            grad_V = (logits - lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        return grad_V.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1)), None


def sequence_logprobs(logps_N: torch.Tensor, seq_N: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Summed log-probs per sequence: ``logps_N[i]`` (one value per response token, any order)
    is added to sequence ``seq_N[i]``. Returns ``(num_seqs,)``; a sequence with no token sums to 0.

    Works for padded and packed batches alike: only the sequence id of each token matters.
    """
    return logps_N.new_zeros(num_seqs).index_add(0, seq_N, logps_N)


def sft_nll(logps_BT: torch.Tensor, mask_BT: torch.Tensor | None = None,
            num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Negative log-likelihood per trained token.

    ``mask_BT`` marks the trained tokens; None means every value is one (e.g. the (N,) log-probs
    of the trained tokens alone). ``num_tokens`` is the normaliser; pass the token count of the
    whole optimiser step so that gradient accumulation (and data parallelism) gives the same
    gradient as one big batch, where a per-micro-batch mean would weight short micro-batches up.
    """
    if mask_BT is None:
        total = logps_BT.sum()
        return -total / (max(logps_BT.numel(), 1) if num_tokens is None else num_tokens)
    if num_tokens is None:
        num_tokens = mask_BT.sum().clamp(min=1)
    return -masked_sum(logps_BT, mask_BT) / num_tokens


def weighted_mean(x_B: torch.Tensor, weights_B: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * x) / sum(w); the plain mean when ``weights_B`` is None.

    Per-example weights, e.g. by label source (human vs AI judge, ``source_weights``).
    """
    if weights_B is None:
        return x_B.mean()
    return (weights_B * x_B).sum() / weights_B.sum()


def bradley_terry(chosen_B: torch.Tensor, rejected_B: torch.Tensor,
                  margin_B: torch.Tensor | None = None, center_coef: float = 0.0,
                  weights_B: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-model loss: -log sigmoid(r_c - r_r - margin), averaged over pairs.

    Bradley & Terry (1952); Ouyang et al. 2022 eq. 1. The optional margin is Llama 2's
    (Touvron et al. 2023 eq. 2): a pair labelled "much better" must be separated by more.
    ``center_coef`` adds coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023), which pins the
    reward's free offset near zero so rewards stay comparable between runs.
    ``weights_B`` makes the average a weighted mean sum(w l) / sum(w) (both terms).
    """
    diff_B = chosen_B - rejected_B
    if margin_B is not None:
        diff_B = diff_B - margin_B
    loss = weighted_mean(-F.logsigmoid(diff_B), weights_B)
    if center_coef:
        loss = loss + center_coef * weighted_mean((chosen_B + rejected_B) ** 2, weights_B)
    return loss


def dpo_loss(policy_chosen_B: torch.Tensor, policy_rejected_B: torch.Tensor,
             ref_chosen_B: torch.Tensor, ref_rejected_B: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len_B: torch.Tensor | None = None, rejected_len_B: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO family on summed sequence log-probs. Returns (loss per pair, chosen reward, rejected reward).

    With h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)):
      sigmoid  -(1-e) log s(beta h) - e log s(-beta h)     DPO, Rafailov et al. 2023 eq. 7;
                                                           e > 0 is conservative DPO (cDPO).
      robust   (-(1-e) log s(beta h) + e log s(-beta h)) / (1 - 2e)
                                                           rDPO, Chowdhury et al. 2024 eq. 8:
                                                           unbiased under label-flip rate e.
      ipo      (h - 1/(2 beta))^2                           IPO, Azar et al. 2023 eq. 17.
                                                           With ``chosen_len_B`` / ``rejected_len_B``
                                                           (response token counts) each log-ratio is
                                                           first divided by its length: per-token
                                                           log-ratios, the form the IPO authors
                                                           reported results with (and TRL uses);
                                                           without, eq. 17 on summed log-ratios, whose
                                                           gradient grows with response length.
      hinge    max(0, 1 - beta h)                           SLiC-HF, Zhao et al. 2023.
    The implicit rewards are beta * (log pi - log ref) of each response (DPO eq. 5).
    """
    chosen_logratio_B = policy_chosen_B - ref_chosen_B
    rejected_logratio_B = policy_rejected_B - ref_rejected_B
    h_B = chosen_logratio_B - rejected_logratio_B
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses_B = -(1 - eps) * F.logsigmoid(beta * h_B) - eps * F.logsigmoid(-beta * h_B)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses_B = (-(1 - eps) * F.logsigmoid(beta * h_B) + eps * F.logsigmoid(-beta * h_B)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        if chosen_len_B is not None and rejected_len_B is not None:
            h_B = chosen_logratio_B / chosen_len_B.clamp(min=1) - rejected_logratio_B / rejected_len_B.clamp(min=1)
        losses_B = (h_B - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses_B = torch.relu(1 - beta * h_B)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {DPO_LOSS_TYPES}")
    return losses_B, beta * chosen_logratio_B.detach(), beta * rejected_logratio_B.detach()


def kl_estimate(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman 2020, "Approximating KL").

    With log r = log ref - log pi:
      k1 = -log r                unbiased, can be negative per sample (the "negative KL" users see);
      k2 = (log r)^2 / 2         biased, low variance, non-negative;
      k3 = (r - 1) - log r       unbiased, non-negative.
    """
    log_r_BT = ref_logp_BT - logp_BT
    if estimator == "k1":
        return -log_r_BT
    if estimator == "k2":
        return 0.5 * log_r_BT ** 2
    if estimator == "k3":
        return torch.expm1(log_r_BT) - log_r_BT
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


# ---------------------------------------------------------------------------------------------
# On-policy RL: advantage estimation and the PPO objectives.
# ``_PG`` is per prompt over its G sampled generations.
# ---------------------------------------------------------------------------------------------


def whiten(x_BT: torch.Tensor, mask_BT: torch.Tensor, shift_mean: bool = True,
           eps: float = 1e-8, all_sum=None) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with mean and variance over all masked positions of the batch.

    The variance is the unbiased one (divide by n - 1), as TRL's ``masked_whiten`` and
    OpenRLHF's advantage normalisation use. With one masked element the variance is taken as
    0 (the result is 0) instead of raising, so that no host sync is needed. ``shift_mean=False``
    adds the mean back: the scale is normalised but the sign of the average is kept (used for
    rewards, whose mean carries signal). Positions where the mask is 0 are returned as 0, and
    NaN or inf there never reaches the statistics nor the gradient. ``all_sum`` (tensor -> tensor)
    sums the count and the two moments over data-parallel processes, so each process whitens its
    shard with the statistics of the whole batch; None means this batch is the whole batch.
    """
    total = all_sum or (lambda t: t)
    keep_BT = mask_BT.bool()
    x_BT = torch.where(keep_BT, x_BT, torch.zeros_like(x_BT))
    n, s = total(torch.stack([keep_BT.sum().to(x_BT.dtype), masked_sum(x_BT, keep_BT)]))
    mean = s / n.clamp(min=1)
    var = total(masked_sum((x_BT - mean) ** 2, keep_BT)) / (n - 1).clamp(min=1)
    out_BT = (x_BT - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out_BT = out_BT + mean
    return torch.where(keep_BT, out_BT, torch.zeros_like(out_BT))


def gae(rewards_BT: torch.Tensor, values_BT: torch.Tensor, mask_BT: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. Returns (advantages, returns), (B, T).

    Schulman et al. 2016 ("High-Dimensional Continuous Control Using GAE") eq. 16:
      delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = sum_l (gamma lam)^l delta_{t+l},
    computed backwards as A_t = delta_t + gamma lam A_{t+1}. Rows are right-padded (mask 1 for
    t < length_b, then 0); the episode ends after the last real token, so V there is 0.
    Rewards and values at masked positions are ignored (NaN allowed). returns = A + V are the
    value targets (the TD(lam) returns). Both outputs are 0 where the mask is 0. Callers pass
    detached rewards and values, as the advantage is a constant in the policy loss.
    """
    keep_BT = mask_BT.bool()
    m_BT = keep_BT.to(values_BT.dtype)
    r_BT = torch.where(keep_BT, rewards_BT, torch.zeros_like(rewards_BT))
    v_BT = torch.where(keep_BT, values_BT, torch.zeros_like(values_BT))
    next_value_B = torch.zeros_like(v_BT[:, 0])
    next_adv_B = torch.zeros_like(v_BT[:, 0])
    advs_reversed = []
    for t in reversed(range(v_BT.shape[1])):
        delta_B = r_BT[:, t] + gamma * next_value_B - v_BT[:, t]
        # (B,) For right-padded rows r and V are already 0 past the end; the mask keeps the
        # output 0 at any masked position even if a caller's mask is not a suffix.
        next_adv_B = (delta_B + gamma * lam * next_adv_B) * m_BT[:, t]
        next_value_B = v_BT[:, t]
        advs_reversed.append(next_adv_B)
    adv_BT = torch.stack(advs_reversed[::-1], dim=1)
    returns_BT = (adv_BT + v_BT) * m_BT
    return adv_BT, returns_BT


def ppo_policy_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, advantages_BT: torch.Tensor,
                    mask_BT: torch.Tensor, clip_range: float,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, as a loss to minimise. Returns (loss, clip_frac, approx_kl).

    Schulman et al. 2017 eq. 7 per token, with ratio = exp(logp - old_logp):
      loss = masked mean over all tokens of max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)).
    The max of the negated terms is the pessimistic min of eq. 7; where the clipped term wins
    the gradient is 0, which is what stops a step from moving the ratio further out of range.
    clip_frac is the share of tokens where the clipped term is strictly larger;
    approx_kl = masked mean of (logp - old_logp)^2 / 2 (the k2 estimator, see ``kl_estimate``).
    Both diagnostics are detached.
    """
    keep_BT = mask_BT.bool()
    zero_BT = torch.zeros_like(logp_BT)
    log_ratio_BT = torch.where(keep_BT, logp_BT - old_logp_BT, zero_BT)
    adv_BT = torch.where(keep_BT, advantages_BT, zero_BT)
    ratio_BT = torch.exp(log_ratio_BT)
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped_BT, clipped_BT), keep_BT)
    clip_frac = masked_mean((clipped_BT > unclipped_BT).to(logp_BT.dtype), keep_BT).detach()
    approx_kl = masked_mean(0.5 * log_ratio_BT ** 2, keep_BT).detach()
    return loss, clip_frac, approx_kl


def ppo_value_loss(values_BT: torch.Tensor, old_values_BT: torch.Tensor, returns_BT: torch.Tensor,
                   mask_BT: torch.Tensor, clip_range_value: float,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss. Returns (loss, clip_frac).

    0.5 * masked mean of max((v - R)^2, (v_clip - R)^2), v_clip = old + clamp(v - old, -c, c):
    the value-clipping of OpenAI baselines' PPO2 and Ziegler et al. 2019's lm-human-preferences,
    which keeps the value head within c of the values that computed the advantages.
    clip_frac (detached) is the share of tokens where the clipped term is strictly larger.
    """
    keep_BT = mask_BT.bool()
    zero_BT = torch.zeros_like(values_BT)
    v_BT = torch.where(keep_BT, values_BT, zero_BT)
    old_BT = torch.where(keep_BT, old_values_BT, zero_BT)
    ret_BT = torch.where(keep_BT, returns_BT, zero_BT)
    v_clipped_BT = old_BT + torch.clamp(v_BT - old_BT, -clip_range_value, clip_range_value)
    unclipped_BT = (v_BT - ret_BT) ** 2
    clipped_BT = (v_clipped_BT - ret_BT) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_BT, clipped_BT), keep_BT)
    clip_frac = masked_mean((clipped_BT > unclipped_BT).to(values_BT.dtype), keep_BT).detach()
    return loss, clip_frac


def rloo_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: r_i - mean_{j != i} r_j within each prompt's group.

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free"); Ahmadian et al. 2024
    ("Back to Basics"), the RLOO estimator. Each sample's baseline excludes the sample itself,
    so the estimate is unbiased. Equals G / (G - 1) (r_i - mean_j r_j); each group's advantages sum to 0.
    ``rewards_PG`` is (P prompts, G generations); G must be at least 2. A NaN reward (a completion
    no reward source scored) is left out of its siblings' baselines and gets advantage 0, as does a
    completion with no scored sibling.
    """
    if rewards_PG.dim() != 2:
        raise ValueError(f"rloo_advantages wants (P, G) rewards, got shape {tuple(rewards_PG.shape)}")
    g = rewards_PG.shape[1]
    if g < 2:
        raise ValueError(f"RLOO needs at least 2 generations per prompt, got G={g}")
    if rewards_PG.isnan().any():
        valid_PG, n_P1, r_PG = _scored(rewards_PG)
        others_mean_PG = (r_PG.sum(dim=1, keepdim=True) - r_PG) / (n_P1 - 1).clamp(min=1)
        return torch.where(valid_PG & (n_P1 > 1), r_PG - others_mean_PG, torch.zeros_like(r_PG))
    others_mean_PG = (rewards_PG.sum(dim=1, keepdim=True) - rewards_PG) / (g - 1)
    return rewards_PG - others_mean_PG


def _scored(rewards_PG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scored mask (P, G), scored count per group (P, 1), rewards with NaN as 0 (P, G))."""
    valid_PG = ~rewards_PG.isnan()
    return valid_PG, valid_PG.sum(dim=1, keepdim=True), torch.where(valid_PG, rewards_PG, torch.zeros_like(rewards_PG))


def grpo_advantages(rewards_PG: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO outcome-supervision advantages: (r - group mean) / (group std + eps).

    Shao et al. 2024 (DeepSeekMath) section 4.1.2, outcome supervision: every token of a response
    gets its group-normalised reward. The std is the unbiased one (torch's default), as in TRL.
    ``scale=False`` returns r - mean, dropping the std division (Dr. GRPO, Liu et al. 2025,
    "Understanding R1-Zero-Like Training"), which otherwise up-weights near-uniform groups.
    A group of equal rewards gives zeros. ``rewards_PG`` is (P, G); G must be at least 2. NaN
    rewards (unscored completions) are left out of their group's mean and std and get advantage 0,
    as TRL's nanmean/nanstd baseline does.
    """
    if rewards_PG.dim() != 2:
        raise ValueError(f"grpo_advantages wants (P, G) rewards, got shape {tuple(rewards_PG.shape)}")
    if rewards_PG.shape[1] < 2:
        raise ValueError(f"GRPO needs at least 2 generations per prompt, got G={rewards_PG.shape[1]}")
    if rewards_PG.isnan().any():
        valid_PG, n_P1, r_PG = _scored(rewards_PG)
        mean_P1 = r_PG.sum(dim=1, keepdim=True) / n_P1.clamp(min=1)
        centred_PG = torch.where(valid_PG, r_PG - mean_P1, torch.zeros_like(r_PG))
        if not scale:
            return centred_PG
        std_P1 = ((centred_PG ** 2).sum(dim=1, keepdim=True) / (n_P1 - 1).clamp(min=1)).sqrt()
        return centred_PG / (std_P1 + eps)
    centred_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    if not scale:
        return centred_PG
    return centred_PG / (rewards_PG.std(dim=1, keepdim=True) + eps)
