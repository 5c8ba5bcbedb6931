"""Supervised fine-tuning: maximise log p(response | prompt) on demonstration data.

Stage 1 of the RLHF pipeline (Ouyang et al. 2022, section 3.5). The loss is the mean
negative log-likelihood per response token over the whole optimiser step
(``losses.sft_nll`` with the step's token count), so accumulation and data parallelism do not
change the gradient. With ``completion_only_loss`` (the default) prompt tokens are masked out.
"""

from __future__ import annotations

from ..config import SFTConfig
from ..data import load_sft
from ..data.tokenize import collate_sft, tokenize_sft
from ..losses import sft_nll, token_logprobs
from ..models import causal_lm_logits, load_causal_lm, load_tokenizer
from .loop import Task, eval_batches, finish, start_run, train


def nll_sum(model, batch) -> tuple:
    """(summed NLL, number of predicted response tokens) of a batch."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = causal_lm_logits(model, ids, mask)
    logps_BT = token_logprobs(logits[:, :-1], ids[:, 1:])
    target_mask = batch["loss_mask"][:, 1:]
    return sft_nll(logps_BT, target_mask, num_tokens=1.0), target_mask.sum()


def run_sft(cfg: SFTConfig) -> dict:
    examples = load_sft(cfg.data)
    eval_examples = load_sft(cfg.eval_data) if cfg.eval_data else []
    run = start_run(cfg, "sft")
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_causal_lm(cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    model.to(run.device)
    run.start_clock()

    train_set, n_cut = tokenize_sft(examples, tokenizer, cfg.max_length, cfg.completion_only_loss)
    eval_set, n_cut_eval = tokenize_sft(eval_examples, tokenizer, cfg.max_length, cfg.completion_only_loss)
    if n_cut or n_cut_eval:
        run.print(f"truncated to max_length={cfg.max_length}: {n_cut} of {len(train_set)} training "
                  f"and {n_cut_eval} of {len(eval_set)} eval examples")
    pad = tokenizer.pad_token_id

    def loss_fn(model, batch, num_tokens):
        total, _ = nll_sum(model, batch)
        loss = total / num_tokens
        return loss, {"loss": loss.item()}

    def evaluate(model):
        total, count = 0.0, 0
        for batch in eval_batches(run, eval_set, lambda b: collate_sft(b, pad), cfg.eval_batch_size):
            s, n = nll_sum(model, batch)
            total, count = total + float(s), count + int(n)
        return {"eval_loss": total / max(count, 1)}

    task = Task(model=model, examples=train_set, collate=lambda b: collate_sft(b, pad), loss_fn=loss_fn,
                units=lambda ex: sum(ex.loss_mask[1:]), evaluate=evaluate if eval_set else None,
                tokenizer=tokenizer)
    summary = train(run, task)
    summary.update(stage="sft", num_examples=len(train_set), truncated_examples=n_cut)
    return finish(run, model, tokenizer, summary)
