"""PPO with a learned critic (Schulman et al. 2017; for RLHF: Ziegler et al. 2019, Ouyang et al.
2022; implementation details after Huang et al. 2024, "The N+ implementation details of RLHF").

Per-token rewards: -kl_coef * KL_t at every response token (``kl_in: reward``), plus the score
at the last token. A critic predicts the value of each prefix; GAE(gamma, lam) turns rewards and
values into advantages (whitened over the batch) and value targets. The critic is a network of
its own, initialised from ``value_model``, else the reward model, else the policy
(``value_head: separate``), or a linear head on the policy's last hidden state
(``value_head: shared``). Policy and critic share one optimiser; the loss is the clipped
surrogate + ``vf_coef`` x the clipped value loss.

With LoRA (``lora_r > 0``) the separate critic is LoRA too: its own frozen backbone (it starts from
different weights than the policy: the reward model, usually) with an adapter and a fully trained
score head, written as an adapter folder to ``value_model/``. Its gradients and optimiser state
shrink like the policy's; its frozen weights remain. ``value_head: shared`` has no critic backbone
at all: the cheapest option in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import OnlineConfig, option
from ..losses import gae, ppo_value_loss, whiten
from ..models import position_ids_from_mask, save_model, unwrap_peft
from .loop import load_trained_model
from .online import end_step, finish_online, mean_of_processes, start_online, update
from .rollout import Experience, KLPenalty, collect, experience_metrics, last_token_onehot


@dataclass
class PPOConfig(OnlineConfig):
    """PPO with a learned critic (Ouyang et al. 2022; Huang et al. 2024, "The N+ implementation details of RLHF with PPO")."""

    stage: ClassVar[str] = "ppo"
    min_generations: ClassVar[int] = 1  # the critic is the baseline: no siblings needed

    ppo_epochs: int = option(4, "Passes of clipped-surrogate updates over each batch of samples.")
    value_model: str = option("", "Critic initialisation: a folder; empty means `reward_model` if set, else the policy.")
    value_head: str = option("separate", "separate: a critic network of its own; shared: a value head on the policy's backbone.",
                             choices=["separate", "shared"])
    gamma: float = option(1.0, "Discount factor.")
    lam: float = option(0.95, "GAE lambda.")
    cliprange_value: float = option(0.2, "Value clip range.")
    vf_coef: float = option(0.1, "Weight of the value loss.")
    whiten_advantages: bool = option(True, "Whiten advantages over each batch of samples.")


class ActorCritic(torch.nn.Module):
    """The policy and its critic, trained together. ``critic`` None means a shared-backbone head."""

    def __init__(self, policy, critic=None):
        super().__init__()
        self.policy, self.critic = policy, critic
        if critic is None:
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.normal_(self.value_head.weight, std=1 / (policy.config.hidden_size + 1) ** 0.5)
            torch.nn.init.zeros_(self.value_head.bias)

    def values(self, input_ids, attention_mask) -> torch.Tensor:
        """(N, T-1): V(prefix up to t), aligned with the shifted per-token layout."""
        pos = position_ids_from_mask(attention_mask)
        if self.critic is None:
            out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                              output_hidden_states=True, use_cache=False)
            return self.value_head(out.hidden_states[-1]).squeeze(-1)[:, :-1]
        critic = unwrap_peft(self.critic)  # a LoRA critic: backbone with adapter, trained score head
        backbone = getattr(critic, critic.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                          use_cache=False).last_hidden_state
        return critic.score(hidden).squeeze(-1)[:, :-1]


def build_critic(cfg: PPOConfig, policy, run):
    if cfg.value_head == "shared":
        return ActorCritic(policy)
    from ..models import load_tokenizer

    path = cfg.value_model or cfg.reward_model or cfg.model
    critic = load_trained_model(cfg, run, path, reward_tokenizer=load_tokenizer(path, cfg.trust_remote_code))
    if not hasattr(unwrap_peft(critic), "score"):
        raise ValueError(f"value_model {path}: the critic needs a decoder with a per-token `score` head; "
                         "use value_model: <a causal LM folder> or value_head: shared")
    return ActorCritic(policy, critic)


def scored_mask(exp: Experience) -> torch.Tensor:
    """(N, T-1) the response mask of the completions some reward source scored (score not NaN)."""
    return exp.mask * (~exp.scores.isnan()).to(exp.mask.dtype)[:, None]


def advantages(cfg: PPOConfig, exp: Experience, kl: KLPenalty) -> dict:
    """GAE over per-token rewards (the KL penalty per token, the score at the last token): fills
    ``exp.advantages`` (whitened over every process's samples) and ``exp.returns``."""
    last = last_token_onehot(exp.mask)
    kl_reward = kl.token_rewards(exp)
    rewards = kl_reward + exp.scores.nan_to_num(0.0)[:, None] * last
    # a completion no reward source scored (NaN) gets no advantage and no value target, as in TRL
    mask = scored_mask(exp)
    adv, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.lam)
    exp.returns = returns
    # whitened with the statistics of every process's samples (exp.all_sum), as on one process
    exp.advantages = whiten(adv, mask, all_sum=exp.all_sum) if cfg.whiten_advantages else adv
    non_score = (kl_reward * exp.mask).sum(1)
    return {"non_score_reward": float(non_score.mean()), "total_reward": float((exp.scores + non_score).nanmean())}


def value_loss(cfg: PPOConfig, model: ActorCritic, exp: Experience, part) -> tuple:
    """The clipped value loss of the sequences ``part`` and its statistics."""
    values = model.values(exp.input_ids[part], exp.attention_mask[part]).float()
    mask = scored_mask(exp)[part]
    loss, clip_frac = ppo_value_loss(values, exp.values[part], exp.returns[part], mask, cfg.cliprange_value)
    resid = (exp.returns[part] - values.detach())[mask.bool()]
    target = exp.returns[part][mask.bool()]
    explained = 1 - resid.var() / target.var().clamp(min=1e-8) if target.numel() > 1 else torch.tensor(0.0)
    return loss, {"value_loss": loss.item(), "value_clip_frac": float(clip_frac),
                  "explained_variance": float(explained)}


def save_critic(run, model: ActorCritic, full: dict | None = None) -> None:
    """The critic next to the policy: ``value_model/`` (a separate critic) or ``value_head.safetensors``;
    ``full`` is the gathered state dict of policy + critic under FSDP2 (None: the module's own weights)."""
    if not run.is_main:
        return
    part = lambda name: {k[len(name) + 1:]: v for k, v in full.items() if k.startswith(name + ".")}  # noqa: E731
    if model.critic is not None and full is None:
        save_model(model.critic, None, run.output_dir / "value_model")
    elif model.critic is not None:  # FSDP2: the critic's gathered weights under its config
        model.critic.save_pretrained(run.output_dir / "value_model", safe_serialization=True, state_dict=part("critic"))
    else:
        from safetensors.torch import save_file

        head = model.value_head.state_dict() if full is None else part("value_head")
        save_file({k: v.contiguous() for k, v in head.items()}, str(run.output_dir / "value_head.safetensors"))


def run_ppo(cfg: PPOConfig) -> dict:
    eng = start_online(cfg, "ppo", build_model=lambda policy, run: build_critic(cfg, policy, run))
    with eng.driver.running() as steps:
        for step in steps:
            eng.driver.begin(step)
            # sample, score, reference log-probs and KL, the critic's values
            exp = collect(eng, step, values=lambda model, ids, attn: model.values(ids, attn))
            metrics = experience_metrics(eng, exp, step)
            kl = eng.kl_penalty()
            metrics.update(mean_of_processes(eng, advantages(cfg, exp, kl)))
            metrics.update(update(eng, exp, step, kl, value_loss=lambda model, part: value_loss(cfg, model, exp, part)))
            end_step(eng, step, exp, metrics)
    return finish_online(eng, save_critic)
