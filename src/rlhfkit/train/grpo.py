"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath, section 4.1).

Each prompt is sampled ``num_generations`` times; a completion's advantage is its reward
normalised within the group, (r - mean) / (std + eps), for every token (``scale_rewards: false``
drops the division, as Dr. GRPO recommends). The KL to the reference is a loss term with the k3
estimator by default (``kl_in: loss``, ``kl_estimator: k3``). The surrogate loss is averaged over
all response tokens of a mini-batch; note that it is not a progress signal (it can sit near 0
while the reward rises): watch ``reward`` and ``kl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import OnlineConfig, option
from ..losses import grpo_advantages
from .rloo import run_group
from .rollout import Experience, KLPenalty, sequence_advantage_metrics


def advantages(cfg: GRPOConfig, exp: Experience, kl: KLPenalty) -> dict:
    """Fills ``exp.advantages``: each completion's reward normalised within its group, on every token."""
    rewards = kl.sequence_rewards(exp)
    adv = grpo_advantages(rewards.view(-1, cfg.num_generations), scale=cfg.scale_rewards).reshape(-1)
    exp.advantages = adv[:, None] * exp.mask
    return sequence_advantage_metrics(exp, rewards, adv)


@dataclass
class GRPOConfig(OnlineConfig):
    """Group relative policy optimisation (Shao et al. 2024): group-normalised rewards, KL in the loss."""

    stage: ClassVar[str] = "grpo"

    num_generations: int = option(4, "Completions sampled per prompt (>= 2).")
    kl_estimator: str = option("k3", "Per-token KL estimator: k1, k2, k3.", choices=["k1", "k2", "k3"])
    kl_in: str = option("loss", "Apply the KL as a per-token reward penalty or as a loss term.", choices=["reward", "loss"])
    kl_coef: float = option(0.04, "KL penalty coefficient (GRPO's beta).")
    scale_rewards: bool = option(True, "Divide by the group's std (False: Dr. GRPO's unscaled advantages).")


def run_grpo(cfg: GRPOConfig) -> dict:
    # RLOO's loop with group-normalised advantages; the KL goes into the loss by default
    # (kl_in: loss, kl_estimator: k3)
    return run_group(cfg, "grpo", advantages)
