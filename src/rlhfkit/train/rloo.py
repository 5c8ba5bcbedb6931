"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

Each prompt is sampled ``num_generations`` times; a completion's advantage is its reward minus the
mean reward of its siblings, the same for every token of the completion. The reward is the score
minus ``kl_coef`` times the sequence's summed KL to the reference (``kl_in: reward``), or the KL
goes into the loss (``kl_in: loss``). Updates use the PPO-clip surrogate, so ``ppo_epochs`` > 1
reuses the samples safely; with one epoch the ratio is 1 and this is plain REINFORCE-LOO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import OnlineConfig, option
from ..losses import rloo_advantages
from .online import Algorithm, Experience, run_online, sequence_kl


@dataclass
class RLOOConfig(OnlineConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each completion's baseline is its siblings' mean reward."""

    stage: ClassVar[str] = "rloo"

    num_generations: int = option(4, "Completions sampled per prompt (>= 2: the siblings are the baseline).")


def sequence_rewards(exp: Experience, kl_coef: float, kl_in: str):
    """(N,) score, with the KL penalty folded in when it goes into the reward."""
    return exp.scores - kl_coef * sequence_kl(exp) if kl_in == "reward" else exp.scores


def run_rloo(cfg: RLOOConfig) -> dict:
    def advantages(exp: Experience, kl_coef: float) -> dict:
        rewards = sequence_rewards(exp, kl_coef, cfg.kl_in)
        adv = rloo_advantages(rewards.view(-1, cfg.num_generations)).reshape(-1)
        exp.advantages = adv[:, None] * exp.mask
        # nanmean: a completion no reward source scored (NaN) is left out; its advantage is 0
        return {"total_reward": float(rewards.nanmean()), "non_score_reward": float((rewards - exp.scores).nanmean()),
                "advantage_std": float(adv.std())}

    return run_online(cfg, "rloo", Algorithm("rloo", advantages))
