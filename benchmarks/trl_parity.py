"""rlhfkit vs TRL 1.16 on one batch: the same loss and the same gradients (issue #17's acceptance).

One batch of Anthropic hh-rlhf-style rows (the raw layout: only ``chosen`` and ``rejected``, each the
whole transcript "\\n\\nHuman: ...\\n\\nAssistant: ...", the prompt implicit), one tiny Llama-style
model with a byte-level BPE tokenizer trained on the spot (space-prefixed tokens, as Llama 3, Qwen
and GPT-2 tokenise), no dropout. For each stage both sides start from copies of the same weights,
compute one batch's loss and call backward; the table gives both fp32 losses, |dloss| and the
gradient's relative difference max|g_rlhfkit - g_TRL| / max|g_TRL| over all parameters, in fp32
and again with both sides in fp64 (see ``compare`` for why the criterion reads the fp64 one).

Stages: DPO (sigmoid, beta 0.1, the reference a copy of the policy), the reward model without and
with a ``margin`` column, completion-only SFT on {prompt, completion}, and SFT on {messages}
(every token trained on both sides: TRL's default for messages is not assistant-only). The
preference stages run twice: on the raw hh layout, and on the same rows with an explicit ``prompt``
split TRL's way (the prompt ends at "Assistant:", each response starts with its space).

TRL's side is TRL's own code: its trainers are built on the model copy and the rows (report_to
none), and one batch of their train dataloader goes through their ``compute_loss``. rlhfkit's side
is its data loader's parsing, tokenisation and collation (packed, as its defaults), and the loss
the recipes use. Acceptance: |dloss| <= 1e-6 (fp32) and grad rel diff <= 1e-6 (fp64).

    .venv/bin/python benchmarks/trl_parity.py [--workdir /tmp/rlhfkit-parity]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import torch

BETA, MAX_LENGTH = 0.1, 512
LOSS_TOL, GRAD_TOL = 1e-6, 1e-6
SPECIALS = dict(bos="<s>", eos="</s>", pad="<pad>", specials=["<|im_start|>", "<|im_end|>"])
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# (human turns, the assistant's earlier replies, chosen reply, rejected reply): hh-rlhf's shape. The two
# replies differ from their first character, so a character-level and a word-level split agree on
# where the prompt ends (TRL cuts at the first differing character, moving a space into the responses).
CONVERSATIONS = [
    (["What is a good way to keep bread fresh?"], [], "Keep it in a paper bag at room temperature.",
     "Just leave it out."),
    (["How do I boil an egg?"], [], "Put it in boiling water for about nine minutes.", "No idea."),
    (["Can you help me write a poem?", "About the sea, please."], ["Sure, what should it be about?"],
     "The waves roll in, the gulls call out, the salt wind sings.", "Poems are hard."),
    (["Why is the sky blue?"], [], "Sunlight scatters off air molecules, and blue light scatters most.",
     "Because it is."),
    (["What should I name my cat?"], [], "Maybe Miso, Pepper or Luna.", "Cat."),
    (["Is it safe to eat raw cookie dough?"], [], "It is safer not to: raw flour and eggs can carry germs.",
     "Yes, eat as much as you like."),
    (["How far is the moon?", "In miles?"], ["About 384,400 kilometres."], "Roughly 238,900 miles.",
     "Far away."),
    (["Tell me a fun fact."], [], "Octopuses have three hearts.", "Facts are fun."),
]


def _transcript(humans, earlier, reply) -> str:
    text = ""
    for i, h in enumerate(humans):
        text += f"\n\nHuman: {h}\n\nAssistant: " + (earlier[i] if i < len(earlier) else reply)
    return text


def hh_rows(margin: bool = False) -> list[dict]:
    """The raw hh-rlhf layout: {chosen, rejected}, each the whole transcript; optional margin."""
    rows = [{"chosen": _transcript(h, e, c), "rejected": _transcript(h, e, r)} for h, e, c, r in CONVERSATIONS]
    if margin:
        for i, row in enumerate(rows):
            row["margin"] = 0.25 * i
    return rows


def explicit_rows(margin: bool = False) -> list[dict]:
    """The same rows with an explicit prompt, split TRL's way: prompt up to "Assistant:", responses from the space."""
    out = []
    for row in hh_rows(margin):
        cut = row["chosen"].rindex("\n\nAssistant:") + len("\n\nAssistant:")
        out.append({**row, "prompt": row["chosen"][:cut], "chosen": row["chosen"][cut:],
                    "rejected": row["rejected"][cut:]})
    return out


def sft_rows() -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in explicit_rows()]


def message_rows() -> list[dict]:
    rows = []
    for humans, earlier, chosen, _ in CONVERSATIONS:
        msgs = []
        for i, h in enumerate(humans):
            msgs += [{"role": "user", "content": h},
                     {"role": "assistant", "content": earlier[i] if i < len(earlier) else chosen}]
        rows.append({"messages": msgs})
    return rows


def make_models(workdir: Path) -> tuple:
    """(tokenizer, causal LM, reward model, DPO policy): a byte-level BPE trained on the rows, a tiny
    Llama, rlhfkit's reward model from it (its new score head drawn once, then copied to both sides),
    and the LM with seeded noise added as the DPO policy, so that its log-ratios to the reference (the
    LM) are not 0 and the loss is not log 2 whatever the code computes."""
    from rlhfkit.models import load_causal_lm, load_reward_model, load_tokenizer, save_model
    from rlhfkit.tiny_models import build_bpe_tokenizer, tiny_causal_lm

    texts = [r[k] for r in hh_rows() for k in ("chosen", "rejected")]
    tok = build_bpe_tokenizer(texts * 4, chat_template=CHATML, vocab_size=400, **SPECIALS)
    path = workdir / "model"
    save_model(tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=4, max_positions=MAX_LENGTH, seed=0),
               tok, path)
    tok = load_tokenizer(str(path))
    torch.manual_seed(0)  # the reward model's new score head
    lm, rm = load_causal_lm(str(path)), load_reward_model(str(path), tok)
    policy = copy.deepcopy(lm)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, lm, rm, policy


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_rel_diff(ours: dict, theirs: dict) -> float:
    """max |g1 - g2| / max |g2| over every parameter (inf when the two sides' parameter sets differ)."""
    if ours.keys() != theirs.keys():
        return float("inf")
    top = max(float(g.abs().max()) for g in theirs.values())
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours) / top


# --------------------------------------------------------------------------- rlhfkit's side


def _pack(model, reward: bool = False) -> bool:
    from rlhfkit.logprobs import packing_works

    return packing_works(model, reward=reward)  # the recipes' default (padding_free) where the model allows it


def ours_dpo(tok, start, lm, rows) -> tuple[float, dict]:
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.data.formats import parse_preference
    from rlhfkit.data.tokenize import tokenize_preference
    from rlhfkit.train.dpo import pair_collate, score_pairs

    policy, ref = copy.deepcopy(start).train(), copy.deepcopy(lm).eval().requires_grad_(False)
    pairs, _ = tokenize_preference([parse_preference(r) for r in rows], tok, MAX_LENGTH, MAX_LENGTH)
    collate, how = pair_collate(policy, ref, tok.pad_token_id, padding_free=True)  # the recipe's default layout
    assert how == "shared-prompt", how
    batch = collate(pairs)
    cfg = DPOConfig(beta=BETA, loss_type="sigmoid")
    losses = score_pairs(policy, ref, batch, cfg)[0]
    loss = losses.sum() / len(pairs)  # the recipe's loss: summed over pairs / the step's pairs
    loss.backward()
    return float(loss), grads(policy)


def ours_rm(tok, rm, rows) -> tuple[float, dict]:
    from rlhfkit.data.formats import parse_preference
    from rlhfkit.data.tokenize import tokenize_preference
    from rlhfkit.losses import bradley_terry
    from rlhfkit.train.rm import pair_collate, pair_rewards

    model = copy.deepcopy(rm).train()
    pairs, _ = tokenize_preference([parse_preference(r) for r in rows], tok, MAX_LENGTH, MAX_LENGTH)
    collate, how = pair_collate(model, tok.pad_token_id, padding_free=True)  # the recipe's default layout
    assert how == "shared-prompt", how
    batch = collate(pairs)
    chosen, rejected = pair_rewards(model, batch)
    margin = batch["margin"] if any("margin" in r for r in rows) else None  # use_margin: true
    loss = bradley_terry(chosen, rejected, margin)
    loss.backward()
    return float(loss), grads(model)


def ours_sft(tok, lm, rows, completion_only: bool = True) -> tuple[float, dict]:
    from rlhfkit.data.formats import parse_sft
    from rlhfkit.data.tokenize import collate_sft, tokenize_sft
    from rlhfkit.train.sft import nll_sum

    model = copy.deepcopy(lm).train()
    examples, _ = tokenize_sft([parse_sft(r) for r in rows], tok, MAX_LENGTH, completion_only)
    total, count = nll_sum(model, collate_sft(examples, tok.pad_token_id, _pack(model)))
    loss = total / count  # the recipe's loss: mean NLL over the step's trained tokens
    loss.backward()
    return float(loss), grads(model)


# --------------------------------------------------------------------------- TRL's side


def _trl_args(cls, workdir: Path, n: int, **kw):
    return cls(output_dir=str(workdir / f"trl-{cls.__name__}"), per_device_train_batch_size=n, report_to="none",
               bf16=False, fp16=False, use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
               max_length=MAX_LENGTH, dataloader_num_workers=0, gradient_checkpointing=False, **kw)


def _trl_step(trainer, model) -> tuple[float, dict]:
    """One batch of TRL's train dataloader through TRL's compute_loss, then backward."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return float(loss), grads(model)


def trl_dpo(tok, start, lm, rows, workdir: Path) -> tuple[float, dict]:
    import trl
    from datasets import Dataset

    policy, ref = copy.deepcopy(start), copy.deepcopy(lm)
    args = _trl_args(trl.DPOConfig, workdir, len(rows), beta=BETA, loss_type=["sigmoid"])
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
    return _trl_step(trainer, policy)


def trl_rm(tok, rm, rows, workdir: Path) -> tuple[float, dict]:
    import trl
    from datasets import Dataset

    model = copy.deepcopy(rm)
    args = _trl_args(trl.RewardConfig, workdir, len(rows))
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return _trl_step(trainer, model)


def trl_sft(tok, lm, rows, workdir: Path) -> tuple[float, dict]:
    import trl
    from datasets import Dataset

    model = copy.deepcopy(lm)
    args = _trl_args(trl.SFTConfig, workdir, len(rows))
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return _trl_step(trainer, model)


# --------------------------------------------------------------------------- the comparison

CASES = {  # name -> (stage, rows)
    "dpo hh": ("dpo", hh_rows),
    "dpo explicit": ("dpo", explicit_rows),
    "rm hh": ("rm", hh_rows),
    "rm explicit": ("rm", explicit_rows),
    "rm+margin hh": ("rm", lambda: hh_rows(margin=True)),
    "rm+margin explicit": ("rm", lambda: explicit_rows(margin=True)),
    "sft prompt/completion": ("sft", sft_rows),
    "sft messages": ("sft-all", message_rows),
}


def run_case(case: str, models: tuple, workdir: Path, dtype: torch.dtype) -> tuple:
    """(rlhfkit loss, TRL loss, rlhfkit grads, TRL grads) with every model copied to ``dtype``."""
    tok, lm, rm, policy = models
    lm, rm, policy = (copy.deepcopy(m).to(dtype) for m in (lm, rm, policy))
    stage, rows_fn = CASES[case]
    rows = rows_fn()
    if stage == "dpo":
        (la, ga), (lb, gb) = ours_dpo(tok, policy, lm, rows), trl_dpo(tok, policy, lm, rows, workdir)
    elif stage == "rm":
        (la, ga), (lb, gb) = ours_rm(tok, rm, rows), trl_rm(tok, rm, rows, workdir)
    else:
        (la, ga), (lb, gb) = ours_sft(tok, lm, rows, completion_only=stage == "sft"), trl_sft(tok, lm, rows, workdir)
    return la, lb, ga, gb


def compare(case: str, models: tuple, workdir: Path) -> dict:
    """One row of the table: both sides' fp32 loss and |dloss|, and the gradients' relative difference
    in fp32 and in fp64.

    The fp32 gradients of the reward model differ by about 1e-6 relative from summation order alone:
    transformers' classifier scores every position and gathers the last, rlhfkit gathers then scores,
    and the score head's gradient sums chosen and rejected terms of opposite sign (TRL against
    itself with the batch reversed differs by 1.0e-6 and 2.2e-6 on these rows). In fp64 that noise
    drops to ~5e-7, so the gradient criterion is taken there. (TRL computes the LM head's log-probs
    in fp32 whatever the model's dtype, its chunked kernel, and rlhfkit's log-softmax is fp32 too: the
    DPO and SFT figures keep fp32-level noise, 1e-7 to 9e-7, in both columns.) A real difference (a
    token more or less, a different position read) is 1e-2 or more in either.
    """
    la, lb, ga, gb = run_case(case, models, workdir, torch.float32)
    _, _, ga64, gb64 = run_case(case, models, workdir, torch.float64)
    return {"case": case, "loss_rlhfkit": la, "loss_trl": lb, "dloss": abs(la - lb),
            "grad_rel_fp32": grad_rel_diff(ga, gb), "grad_rel": grad_rel_diff(ga64, gb64)}


def passes(row: dict) -> bool:
    return row["dloss"] <= LOSS_TOL and row["grad_rel"] <= GRAD_TOL


def table(rows: list[dict]) -> str:
    lines = ["| stage | loss rlhfkit | loss TRL | abs dloss | grad rel diff fp32 | grad rel diff fp64 | parity |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['loss_rlhfkit']:.7f} | {r['loss_trl']:.7f} | {r['dloss']:.1e} | "
              f"{r['grad_rel_fp32']:.1e} | {r['grad_rel']:.1e} | {'yes' if passes(r) else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, help="where the model and TRL's output folders go (default: a temp dir)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        models = make_models(workdir)
        rows = [compare(case, models, workdir) for case in args.cases.split(",")]
    print(table(rows))
    raise SystemExit(0 if all(map(passes, rows)) else 1)


if __name__ == "__main__":
    main()
