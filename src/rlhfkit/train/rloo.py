"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics").

Each prompt is sampled ``num_generations`` times; a completion's advantage is its reward minus the
mean reward of its siblings, the same for every token of the completion. The reward is the score
minus ``kl_coef`` times the sequence's summed KL to the reference (``kl_in: reward``), or the KL
goes into the loss (``kl_in: loss``). Updates use the PPO-clip surrogate, so ``ppo_epochs`` > 1
reuses the samples safely; with one epoch the ratio is 1 and this is plain REINFORCE-LOO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from ..config import OnlineConfig, option
from ..losses import rloo_advantages
from .online import end_step, finish_online, mean_of_processes, start_online, update
from .rollout import Experience, KLPenalty, collect, experience_metrics, sequence_advantage_metrics


@dataclass
class RLOOConfig(OnlineConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each completion's baseline is its siblings' mean reward."""

    stage: ClassVar[str] = "rloo"

    num_generations: int = option(4, "Completions sampled per prompt (>= 2: the siblings are the baseline).")


def advantages(cfg: RLOOConfig, exp: Experience, kl: KLPenalty) -> dict:
    """Fills ``exp.advantages``: each completion's reward minus its siblings' mean, on every token."""
    rewards = kl.sequence_rewards(exp)
    adv = rloo_advantages(rewards.view(-1, cfg.num_generations)).reshape(-1)
    exp.advantages = adv[:, None] * exp.mask
    return sequence_advantage_metrics(exp, rewards, adv)


def run_group(cfg, stage: str, advantages: Callable) -> dict:
    """The critic-free loop RLOO and GRPO share: per step, sample ``num_generations`` completions per
    prompt, score them with reference log-probs and KL, turn each group's rewards into advantages
    (``advantages(cfg, exp, kl)``: the only place the two differ), then PPO-clip updates."""
    eng = start_online(cfg, stage)
    with eng.driver.running() as steps:
        for step in steps:
            eng.driver.begin(step)
            exp = collect(eng, step)  # sample, score, reference log-probs and KL
            metrics = experience_metrics(eng, exp, step)
            kl = eng.kl_penalty()  # reads kl_in: a reward penalty or a loss term
            metrics.update(mean_of_processes(eng, advantages(cfg, exp, kl)))
            metrics.update(update(eng, exp, step, kl))
            end_step(eng, step, exp, metrics)
    return finish_online(eng)


def run_rloo(cfg: RLOOConfig) -> dict:
    return run_group(cfg, "rloo", advantages)
