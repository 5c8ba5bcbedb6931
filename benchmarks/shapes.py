"""Benchmark workloads for ``vs_trl.py``: the model and data a comparison runs on.

``small``: the original CPU benchmark (Llama d192 L4, a tied head over a ~2k-word vocabulary,
prompts 4-40 and responses 2-60 words). On a small vocabulary and little padding both sides sit
near the dense roofline, so it says little about a real fine-tune.

``realistic``: the shape of a real preference fine-tune, scaled down in depth only: a 32k-word
vocabulary with an untied LM head (as Llama 2/3, Mistral, Qwen), hidden 256, and long-tailed
lengths (prompts and responses log-normal, from ~10 to several hundred tokens, a pair up to ~850),
words drawn Zipf-like. Here the LM head (32k x 256 per position, and its log-softmax), padding
and the prompt computed twice (chosen and rejected) dominate, as they do at scale.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    vocab: int            # words in the vocabulary (specials come on top)
    tied: bool            # LM head tied to the input embeddings
    n_pairs: int
    batch: int
    max_length: int
    steps: int            # default optimiser steps of one measurement
    prompt_words: tuple[float, float, int, int]    # log-normal (median, sigma), clipped to [lo, hi]
    response_words: tuple[float, float, int, int]


SHAPES = {
    "small": Shape("small", hidden=192, layers=4, heads=4, vocab=2000, tied=True, n_pairs=512, batch=32,
                   max_length=256, steps=16, prompt_words=(0, 0, 4, 40), response_words=(0, 0, 2, 60)),
    # 8 steps x 16 = one pass over the 128 pairs, so a precomputed reference costs what it saves
    "realistic": Shape("realistic", hidden=256, layers=4, heads=4, vocab=32000, tied=False, n_pairs=128, batch=16,
                       max_length=1024, steps=8, prompt_words=(60, 0.9, 8, 400), response_words=(90, 0.8, 4, 450)),
}


def small_pairs(seed: int, n: int) -> list[dict]:
    """The original data: prompts 4-40 words, responses 2-60 words (exponential tail), uniform words."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]

    def text(lo, hi):
        k = min(hi, lo + int(rng.expovariate(1.0 / ((hi - lo) / 3))))
        return " ".join(rng.choice(words) for _ in range(k))

    return [{"prompt": text(4, 40), "chosen": text(2, 60), "rejected": text(2, 60)} for _ in range(n)]


def realistic_pairs(shape: Shape, seed: int = 0) -> list[dict]:
    """Long-tailed pairs over a Zipf-distributed vocabulary of ``shape.vocab`` words."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(shape.vocab)]
    cum = list(_cumulative(1.0 / (r + 1) for r in range(shape.vocab)))

    def length(spec):
        median, sigma, lo, hi = spec
        return max(lo, min(hi, int(rng.lognormvariate(math.log(median), sigma))))

    def text(spec):
        return " ".join(rng.choices(words, cum_weights=cum, k=length(spec)))

    return [{"prompt": text(shape.prompt_words), "chosen": text(shape.response_words),
             "rejected": text(shape.response_words)} for _ in range(shape.n_pairs)]


def _cumulative(xs):
    total = 0.0
    for x in xs:
        total += x
        yield total


def make_pairs(shape: Shape, seed: int = 0) -> list[dict]:
    return small_pairs(seed, shape.n_pairs) if shape.name == "small" else realistic_pairs(shape, seed)


def write_model(shape: Shape, path: Path, texts: list[str], seed: int = 0) -> None:
    """The benchmark model folder: word tokenizer over the shape's vocabulary, Llama-style model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import save_model
    from rlhfkit.tiny_models import build_word_tokenizer

    vocab_text = [" ".join(f"w{i}" for i in range(shape.vocab))] if shape.name != "small" else []
    tok = build_word_tokenizer(texts + vocab_text)  # every vocabulary word, seen or not
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.hidden * 4,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=max(256, shape.max_length), pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=shape.tied)
    torch.manual_seed(seed)
    save_model(LlamaForCausalLM(config), tok, path)


def describe(pairs: list[dict]) -> dict:
    """Word-length percentiles of prompts and responses (for RESULTS.md)."""
    def pct(xs):
        xs = sorted(xs)
        return {f"p{q}": xs[min(len(xs) - 1, int(q / 100 * len(xs)))] for q in (10, 50, 90, 99)} | {"max": xs[-1]}

    return {"prompt_words": pct([len(p["prompt"].split()) for p in pairs]),
            "response_words": pct([len(p[k].split()) for p in pairs for k in ("chosen", "rejected")])}


if __name__ == "__main__":
    for s in SHAPES.values():
        print(s.name, json.dumps(describe(make_pairs(s))))
