"""Supervised fine-tuning: maximise log p(response | prompt) on demonstration data.

Stage 1 of the RLHF pipeline (Ouyang et al. 2022, section 3.5). The loss is the mean
negative log-likelihood per response token over the whole optimiser step
(``losses.sft_nll`` with the step's token count), so accumulation and data parallelism do not
change the gradient. With ``completion_only_loss`` (the default) prompt tokens are masked out.
With ``padding_free`` (the default) each micro-batch is packed without padding
(``data.tokenize.layout``) and the LM head runs only where a trained token is predicted.
With ``lora_r > 0`` only a LoRA adapter trains and the output folder holds the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import PaddingFreeConfig, TrainConfig, option
from ..data import load_sft
from ..data.tokenize import collate_sft, tokenize_sft
from ..logprobs import batch_logprobs, packing_works
from ..losses import sft_nll
from .checkpoint import finish
from .loop import Task, checked_tokenizer, eval_batches, load_trained_model, open_run, train


@dataclass
class SFTConfig(PaddingFreeConfig, TrainConfig):
    """Supervised fine-tuning on {prompt, completion}, {messages} or {text} records."""

    stage: ClassVar[str] = "sft"

    completion_only_loss: bool = option(True, "Train only on response tokens (prompt tokens masked out).")


def nll_sum(model, batch) -> tuple:
    """(summed NLL, number of predicted response tokens) of a padded or packed batch: ``losses.sft_nll``
    with normaliser 1; the trainer divides by the optimiser step's token count."""
    logps_N = batch_logprobs(model, batch)
    return sft_nll(logps_N, num_tokens=1), logps_N.numel()


def run_sft(cfg: SFTConfig) -> dict:
    run, examples, eval_examples = open_run(cfg, "sft", load_sft, "sft")
    tokenizer = checked_tokenizer(cfg, examples + eval_examples)
    model = load_trained_model(cfg, run)
    run.start_clock()

    train_set, n_cut = tokenize_sft(examples, tokenizer, cfg.max_length, cfg.completion_only_loss)
    eval_set, n_cut_eval = tokenize_sft(eval_examples, tokenizer, cfg.max_length, cfg.completion_only_loss)
    if n_cut or n_cut_eval:
        run.print(f"truncated to max_length={cfg.max_length}: {n_cut} of {len(train_set)} training "
                  f"and {n_cut_eval} of {len(eval_set)} eval examples")
    pad = tokenizer.pad_token_id
    with run.accelerator.autocast():  # checked as it will run (bf16 on a GPU: FlashAttention needs it)
        pack = cfg.padding_free and packing_works(model)
    if cfg.padding_free and not pack:
        run.print("padding_free: this model does not compute packed sequences like padded ones; using padding")
    collate = lambda b: collate_sft(b, pad, pack)  # noqa: E731

    def loss_fn(model, batch, num_tokens):
        total, _ = nll_sum(model, batch)
        loss = total / num_tokens
        return loss, {"loss": loss.item()}

    def evaluate(model):
        total, count = 0.0, 0
        for batch in eval_batches(run, eval_set, collate, cfg.eval_batch_size):
            s, n = nll_sum(model, batch)
            total, count = total + float(s), count + int(n)
        return {"eval_loss": total / max(count, 1)}

    task = Task(model=model, examples=train_set, collate=collate, loss_fn=loss_fn,
                units=lambda ex: sum(ex.loss_mask[1:]), evaluate=evaluate if eval_set else None,
                tokenizer=tokenizer)
    summary = train(run, task)
    summary.update(stage="sft", num_examples=len(train_set), truncated_examples=n_cut)
    return finish(run, model, tokenizer, summary)
