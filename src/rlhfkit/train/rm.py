"""Reward model: learn to predict which of two responses a person preferred.

Stage 2 of the RLHF pipeline. Bradley-Terry loss -log sigmoid(r(x, y_c) - r(x, y_r) - margin)
(``losses.bradley_terry``); the scalar reward is read at the last real token of each sequence by
attention mask (``models.reward_forward``), whatever the padding side. Chosen and rejected rows go
through the model in one batch, packed without padding when ``padding_free``, each pair's prompt
then computed once for both responses (``data.pair_tree``, where ``logprobs.tree_pairs_work``). Held-out accuracy is reported with a 95% Wilson
interval from the first evaluation, and a warning is printed when it cannot be told from chance.
With ``lora_r > 0`` the backbone trains through a LoRA adapter while the score head trains in full
(peft's ``modules_to_save`` for sequence classification); the adapter folder carries both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import PaddingFreeConfig, SourceWeightsConfig, TrainConfig, option
from ..data import load_preference
from ..data.sources import apply_source_weights
from ..data.tokenize import collate_pairs, tokenize_preference
from ..data.pair_tree import tree_pairs
from ..logprobs import packing_works, tree_pairs_work
from ..losses import bradley_terry
from ..models import packed_rewards, reward_forward
from ..stats import wilson_interval
from .checkpoint import finish
from .loop import Task, checked_tokenizer, eval_batches, load_trained_model, open_run, train


@dataclass
class RMConfig(SourceWeightsConfig, PaddingFreeConfig, TrainConfig):
    """Bradley-Terry reward model on {prompt, chosen, rejected} pairs."""

    stage: ClassVar[str] = "rm"

    learning_rate: float = option(1e-4, "Peak AdamW learning rate.")
    use_margin: bool = option(True, "Subtract a pair's `margin` field in the loss (Llama 2 eq. 2) when present.")
    margin_from_scores: bool = option(False, "A pair without `margin` takes score_chosen - score_rejected as its margin "
                                             "(UltraFeedback's columns; a record lacking them is a bad record); used as is, "
                                             "so mind the scale (UltraFeedback's scores run 1-10).")
    center_rewards_coef: float = option(0.0, "Weight of mean((r_c + r_r)^2), which keeps rewards centred on 0.")


def pair_rewards(model, batch):
    """(chosen rewards (B,), rejected rewards (B,)) from a concatenated pair batch, padded or packed."""
    if "position_ids" in batch:  # packed; with a tree_mask, each prompt once for both responses
        rewards = packed_rewards(model, batch["input_ids"], batch["position_ids"], batch["last_index"],
                                 batch.get("tree_mask"))
    else:
        rewards = reward_forward(model, batch["input_ids"], batch["attention_mask"])
    return rewards.chunk(2)


def pair_collate(model, pad_id: int, padding_free: bool):
    """(collate function, its layout): with ``padding_free``, each pair's prompt computed once for
    both responses ("shared-prompt", ``data.pair_tree``) where the model scores that exactly, else
    packed rows ("packed") where it scores those exactly, else "padded"."""
    if padding_free and packing_works(model, reward=True):
        if tree_pairs_work(model):
            return (lambda b: tree_pairs(b, pad_id)), "shared-prompt"
        return (lambda b: collate_pairs(b, pad_id, True)), "packed"
    return (lambda b: collate_pairs(b, pad_id, False)), "padded"


def run_rm(cfg: RMConfig) -> dict:
    run, pairs, eval_pairs = open_run(cfg, "rm", load_preference, "prefs", margin_from_scores=cfg.margin_from_scores)
    tokenizer = checked_tokenizer(cfg, pairs + eval_pairs)
    model = load_trained_model(cfg, run, reward_tokenizer=tokenizer)
    run.start_clock()

    train_set, n_cut = tokenize_preference(pairs, tokenizer, cfg.max_length, cfg.max_prompt_length)
    eval_set, _ = tokenize_preference(eval_pairs, tokenizer, cfg.max_length, cfg.max_prompt_length)
    if n_cut:
        run.print(f"truncated: {n_cut} of {len(train_set)} training pairs (max_length={cfg.max_length}, "
                  f"max_prompt_length={cfg.max_prompt_length})")
    weighted = apply_source_weights(train_set, cfg.source_weights)
    if weighted:
        run.print(f"source weights: {weighted}")
    with run.accelerator.autocast():  # checked as it will run (bf16 on a GPU: FlashAttention needs it)
        collate, how = pair_collate(model, tokenizer.pad_token_id, cfg.padding_free)
    if cfg.padding_free and how == "padded":
        run.print("padding_free: this model cannot score packed sequences like padded ones; using padding")

    def loss_fn(model, batch, num_pairs):
        chosen, rejected = pair_rewards(model, batch)
        margin = batch["margin"] if cfg.use_margin else None
        weight = batch["weight"] if cfg.source_weights else None
        # bradley_terry averages over this micro-batch (weighted: sum(w l) / sum(w)); rescale to a
        # share of the step's pairs: sum(w l) / num_pairs, weights having mean 1 over the data.
        share = float(weight.sum()) if weight is not None else len(chosen)
        loss = bradley_terry(chosen, rejected, margin, cfg.center_rewards_coef, weight) * share / num_pairs
        return loss, {"loss": loss.item(), "accuracy": float((chosen > rejected).sum()) / num_pairs,
                      "margin": float((chosen - rejected).detach().sum()) / num_pairs,
                      "reward_mean": float((chosen + rejected).detach().sum()) / (2 * num_pairs)}

    def evaluate(model):
        correct, n, diff_sum, loss_sum = 0, 0, 0.0, 0.0
        for batch in eval_batches(run, eval_set, collate, cfg.eval_batch_size):
            chosen, rejected = pair_rewards(model, batch)
            correct += int((chosen > rejected).sum())
            n += len(chosen)
            diff_sum += float((chosen - rejected).sum())
            loss_sum += float(bradley_terry(chosen, rejected)) * len(chosen)
        low, high = wilson_interval(correct, n)
        return {"eval_accuracy": correct / n, "eval_accuracy_ci": [low, high], "eval_margin": diff_sum / n,
                "eval_loss": loss_sum / n, "eval_pairs": n}

    task = Task(model=model, examples=train_set, collate=collate, loss_fn=loss_fn,
                evaluate=evaluate if eval_set else None, progress_keys=("loss", "accuracy"),
                tokenizer=tokenizer)
    summary = train(run, task)
    if eval_set and summary["eval_accuracy_ci"][0] <= 0.5:
        run.print(f"warning: held-out accuracy {summary['eval_accuracy']:.3f} (95% CI "
                  f"{summary['eval_accuracy_ci'][0]:.3f}-{summary['eval_accuracy_ci'][1]:.3f}) is not "
                  "distinguishable from chance: check the labels, padding, and that the model was fine-tuned first")
    summary.update(stage="rm", num_pairs=len(train_set), truncated_examples=n_cut)
    return finish(run, model, tokenizer, summary)
