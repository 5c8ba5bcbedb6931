"""Direct preference optimisation: learn from preference pairs with no reward model.

Rafailov et al. 2023: the policy's log-ratio to a frozen reference, scaled by beta, is an implicit
reward; the Bradley-Terry loss on it (``losses.dpo_loss``) trains the policy directly. Also IPO,
robust DPO and hinge through ``loss_type``. Log-probs are summed over response tokens; IPO divides
each log-ratio by its response length first unless ``ipo_normalize_length`` is off (TRL's form).

With ``precompute_ref`` the reference log-probs of every pair are computed once before training
(from the policy itself when the reference is the starting model, so no second copy is loaded;
else from ``ref_model``, which is then freed): only the policy is in memory while training, with
the same result since the reference is frozen. Without it the reference runs alongside, under
``torch.no_grad``. With LoRA (``lora_r > 0``) the reference is the policy with its adapter switched
off (``models.adapter_disabled``): exactly the starting weights, and never a second copy. With ``padding_free`` (the default) the 2B sequences of a micro-batch are packed
without padding, each pair's prompt computed once for both responses where the model allows
(``data.pair_tree``), and the LM head runs only at response positions.

Logged per step: the implicit rewards of chosen and rejected responses, their margin, reward
accuracy, summed log-probs, and ``logratio``: log pi - log ref per response token, averaged over
the dataset's chosen and rejected responses. It is not a KL: the responses are not samples of the
policy, and DPO pushes rejected responses down, so it goes negative; the KL to the reference is
measured on the policy's own samples (``rlhfkit eval``, the demo's gold-eval).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import ConfigError, PaddingFreeConfig, SourceWeightsConfig, TrainConfig, option
from ..data import load_preference
from ..data.sources import apply_source_weights
from ..data.tokenize import collate_pairs, tokenize_preference
from ..data.pair_tree import tree_pairs
from ..logprobs import packing_works, response_logps, tree_pairs_work
from ..losses import dpo_loss
from ..models import adapter_disabled, load_causal_lm
from .checkpoint import finish
from .loop import Run, Task, checked_tokenizer, eval_batches, load_trained_model, open_run, train


@dataclass
class DPOConfig(SourceWeightsConfig, PaddingFreeConfig, TrainConfig):
    """Direct preference optimisation (and IPO, robust DPO, hinge) on {prompt, chosen, rejected} pairs."""

    stage: ClassVar[str] = "dpo"

    learning_rate: float = option(1e-6, "Peak AdamW learning rate.")
    ref_model: str = option("", "Reference model folder; empty means the starting `model`.")
    beta: float = option(0.1, "Strength of the implicit KL to the reference (DPO's beta).")
    loss_type: str = option("sigmoid", "sigmoid = DPO, ipo, robust = rDPO, hinge = SLiC.",
                            choices=["sigmoid", "ipo", "robust", "hinge"])
    label_smoothing: float = option(0.0, "Assumed label-flip rate: cDPO for sigmoid, rDPO's epsilon for robust (TRL 1.16 "
                                         "ignores it for sigmoid; rlhfkit applies it: see docs/trl.md).")
    ipo_normalize_length: bool = option(True, "IPO: divide each response's log-ratio by its token count before Azar et al. "
                                              "eq. 17 (as TRL does; the IPO authors' results use this form). False: eq. 17 "
                                              "on summed log-ratios, whose gradient grows with response length.")
    precompute_ref: bool = option(False, "Compute reference log-probs once before training and free the reference model.")

    def check(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"config: field 'beta' must be > 0, got {self.beta}")


def response_lengths(batch) -> torch.Tensor:
    """Response token count of each sequence, (2B,): chosen then rejected (IPO's length normaliser)."""
    seq_N = batch["seq_id"][:, 1:][batch["loss_mask"][:, 1:].bool()]
    return torch.zeros(len(batch["last_index"]), device=seq_N.device).index_add(
        0, seq_N, torch.ones(len(seq_N), device=seq_N.device))


@torch.no_grad()
def precompute_reference(run: Run, ref_model, pairs: list, collate) -> None:
    """Store the reference's summed log-probs on every pair (``ref_chosen``, ``ref_rejected``)."""
    ref_model.eval()
    for start in range(0, len(pairs), run.cfg.eval_batch_size):
        chunk = pairs[start:start + run.cfg.eval_batch_size]
        batch = {k: v.to(run.device) for k, v in collate(chunk).items()}
        with run.accelerator.autocast(), adapter_disabled(ref_model):
            chosen, rejected = response_logps(ref_model, batch).float().chunk(2)
        for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            pair.ref_chosen, pair.ref_rejected = c, r


def score_pairs(model, ref, batch, cfg: DPOConfig):
    """DPO loss per pair and the figures logged with it.

    The reference log-probs come from the batch when precomputed, else from ``ref`` under no_grad.
    Returns (loss (B,), chosen reward (B,), rejected reward (B,), policy log-probs of chosen and
    rejected (B,) each, summed log pi - log ref over response tokens, response token count).
    """
    pc, pr = response_logps(model, batch).float().chunk(2)
    if "ref_logps" in batch:
        rc, rr = batch["ref_logps"].chunk(2)
    else:
        with torch.no_grad(), adapter_disabled(ref):  # a LoRA policy as its own reference
            rc, rr = response_logps(ref, batch).float().chunk(2)
    lc = lr = None
    if cfg.loss_type == "ipo" and cfg.ipo_normalize_length:
        lc, lr = response_lengths(batch).chunk(2)
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing,
                                            chosen_len_B=lc, rejected_len_B=lr)
    logratio_sum = float((pc - rc).detach().sum() + (pr - rr).detach().sum())
    return losses, chosen_r, rejected_r, pc, pr, logratio_sum, batch["loss_mask"][:, 1:].sum()


def pair_collate(policy, ref, pad_id: int, padding_free: bool):
    """(collate function, its layout): with ``padding_free``, each pair's prompt computed once for
    both responses ("shared-prompt", ``data.pair_tree``) where policy and reference give the same
    log-probs that way, else packed rows ("packed") where they do, else "padded"."""
    if padding_free and packing_works(policy) and (ref is policy or packing_works(ref)):
        if tree_pairs_work(policy, reward=False) and (ref is policy or tree_pairs_work(ref, reward=False)):
            return (lambda b: tree_pairs(b, pad_id)), "shared-prompt"
        return (lambda b: collate_pairs(b, pad_id, True)), "packed"
    return (lambda b: collate_pairs(b, pad_id, False)), "padded"


def load_reference(cfg: DPOConfig, run: Run, policy):
    """(the reference model, how it is had: logged in summary.json as ``reference``).

    Before the first step the policy *is* the reference: with precompute_ref and no separate
    ref_model, its log-probs are taken from the policy and no second copy is ever loaded. A LoRA
    policy stays its own reference throughout: its adapter is switched off for reference passes."""
    if cfg.ref_model in ("", cfg.model) and cfg.lora_r > 0:
        return policy, "policy, adapter disabled"
    if cfg.ref_model in ("", cfg.model) and cfg.precompute_ref:
        return policy, "policy before its first step, precomputed"
    # frozen: held in the compute dtype (bf16 on GPU) to halve its memory
    ref = load_causal_lm(cfg.ref_model or cfg.model, dtype=run.dtype, trust_remote_code=cfg.trust_remote_code,
                         allow_pickle=cfg.allow_pickle, field="ref_model" if cfg.ref_model else "model")
    return ref.to(run.device).requires_grad_(False), "separate model" + (", precomputed" if cfg.precompute_ref else "")


def run_dpo(cfg: DPOConfig) -> dict:
    run, pairs, eval_pairs = open_run(cfg, "dpo", load_preference, "prefs")
    tokenizer = checked_tokenizer(cfg, pairs + eval_pairs)
    policy = load_trained_model(cfg, run)
    ref, reference = load_reference(cfg, run, policy)
    run.start_clock()

    train_set, n_cut = tokenize_preference(pairs, tokenizer, cfg.max_length, cfg.max_prompt_length)
    eval_set, _ = tokenize_preference(eval_pairs, tokenizer, cfg.max_length, cfg.max_prompt_length)
    if n_cut:
        run.print(f"truncated: {n_cut} of {len(train_set)} training pairs")
    weighted = apply_source_weights(train_set, cfg.source_weights)
    if weighted:
        run.print(f"source weights: {weighted}")
    with run.accelerator.autocast():  # checked as it will run (bf16 on a GPU: FlashAttention needs it)
        collate, how = pair_collate(policy, ref, tokenizer.pad_token_id, cfg.padding_free)
    if cfg.padding_free and how == "padded":
        run.print("padding_free: this model does not compute packed sequences like padded ones; using padding")
    if cfg.precompute_ref:
        run.print(f"precomputing reference log-probs for {len(train_set) + len(eval_set)} pairs")
        precompute_reference(run, ref, train_set + eval_set, collate)
        ref = None
        gc.collect()

    def loss_fn(model, batch, num_pairs):
        losses, chosen_r, rejected_r, pc, pr, logratio_sum, _ = score_pairs(model, ref, batch, cfg)
        # Weighted by label source (mean 1 over the data, so unweighted runs are unchanged).
        loss = (losses * batch["weight"]).sum() / num_pairs if cfg.source_weights else losses.sum() / num_pairs
        return loss, {"loss": loss.item(), "rewards_chosen": float(chosen_r.sum()) / num_pairs,
                      "rewards_rejected": float(rejected_r.sum()) / num_pairs,
                      "margin": float((chosen_r - rejected_r).sum()) / num_pairs,
                      "reward_accuracy": float((chosen_r > rejected_r).sum()) / num_pairs,
                      "logps_chosen": float(pc.detach().sum()) / num_pairs,
                      "logps_rejected": float(pr.detach().sum()) / num_pairs,
                      "logratio_sum": logratio_sum, "response_tokens": float(batch["loss_mask"][:, 1:].sum())}

    def evaluate(model):
        n, correct, margin, loss_sum, lr_sum, tokens = 0, 0, 0.0, 0.0, 0.0, 0
        for batch in eval_batches(run, eval_set, collate, cfg.eval_batch_size):
            losses, chosen_r, rejected_r, _, _, lr, ntok = score_pairs(model, ref, batch, cfg)
            n += len(losses)
            correct += int((chosen_r > rejected_r).sum())
            margin += float((chosen_r - rejected_r).sum())
            loss_sum += float(losses.sum())
            lr_sum, tokens = lr_sum + lr, tokens + int(ntok)
        return {"eval_reward_accuracy": correct / n, "eval_margin": margin / n, "eval_loss": loss_sum / n,
                "eval_logratio": lr_sum / max(tokens, 1), "eval_pairs": n}

    task = Task(model=policy, examples=train_set, collate=collate, loss_fn=loss_fn,
                evaluate=evaluate if eval_set else None, progress_keys=("loss", "reward_accuracy", "margin"),
                ratios={"logratio": ("logratio_sum", "response_tokens")}, tokenizer=tokenizer)
    summary = train(run, task)
    summary.update(stage="dpo", num_pairs=len(train_set), truncated_examples=n_cut,
                   precompute_ref=cfg.precompute_ref, reference=reference)
    return finish(run, policy, tokenizer, summary)

