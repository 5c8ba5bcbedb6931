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

    Uses ``log_softmax`` + gather rather than cross_entropy so that the values are the same
    ones the DPO and KL code consume.
    """
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(logits_BTV: torch.Tensor, input_ids_BT: torch.Tensor,
                      loss_mask_BT: torch.Tensor) -> torch.Tensor:
    """Sum of log p over the tokens a mask selects, for a causal LM.

    Position t's logits predict token t+1, so logits are shifted left against the ids and
    ``loss_mask_BT[:, t]`` says whether token t is a response token. Returns ``(B,)``.
    """
    logps_BT = token_logprobs(logits_BTV[:, :-1], input_ids_BT[:, 1:])
    return masked_sum(logps_BT, loss_mask_BT[:, 1:], dim=1)


def sft_nll(logps_BT: torch.Tensor, mask_BT: torch.Tensor,
            num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Negative log-likelihood per trained token.

    ``num_tokens`` is the normaliser; pass the token count of the whole optimiser step so that
    gradient accumulation (and data parallelism) gives the same gradient as one big batch,
    where a per-micro-batch mean would weight short micro-batches up.
    """
    if num_tokens is None:
        num_tokens = mask_BT.sum().clamp(min=1)
    return -masked_sum(logps_BT, mask_BT) / num_tokens


def bradley_terry(chosen_B: torch.Tensor, rejected_B: torch.Tensor,
                  margin_B: torch.Tensor | None = None, center_coef: float = 0.0) -> torch.Tensor:
    """Reward-model loss: -log sigmoid(r_c - r_r - margin), averaged over pairs.

    Bradley & Terry (1952); Ouyang et al. 2022 eq. 1. The optional margin is Llama 2's
    (Touvron et al. 2023 eq. 2): a pair labelled "much better" must be separated by more.
    ``center_coef`` adds coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023), which pins the
    reward's free offset near zero so rewards stay comparable between runs.
    """
    diff_B = chosen_B - rejected_B
    if margin_B is not None:
        diff_B = diff_B - margin_B
    loss = -F.logsigmoid(diff_B).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_B + rejected_B) ** 2).mean()
    return loss


def dpo_loss(policy_chosen_B: torch.Tensor, policy_rejected_B: torch.Tensor,
             ref_chosen_B: torch.Tensor, ref_rejected_B: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO family on summed sequence log-probs. Returns (loss per pair, chosen reward, rejected reward).

    With h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)):
      sigmoid  -(1-e) log s(beta h) - e log s(-beta h)     DPO, Rafailov et al. 2023 eq. 7;
                                                           e > 0 is conservative DPO (cDPO).
      robust   (-(1-e) log s(beta h) + e log s(-beta h)) / (1 - 2e)
                                                           rDPO, Chowdhury et al. 2024 eq. 8:
                                                           unbiased under label-flip rate e.
      ipo      (h - 1/(2 beta))^2                           IPO, Azar et al. 2023 eq. 17.
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
