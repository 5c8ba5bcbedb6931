"""A tiny world with a known preference: short food reviews, where people prefer the kind ones.

Prompts ask about a dish ("how is the soup ?"); responses describe it with two adjectives of the
same polarity ("the soup is fresh and tasty ."). Demonstrations are half kind, half unkind, so an
SFT model says either; every preference pair prefers the kind response. The property is
learnable by a small model in seconds, which makes it a test of *learning*: a reward model
should rank kind over unkind on unseen pairs, and DPO should make kind samples more frequent.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = ["soup", "tea", "bread", "salad", "cake", "rice", "pasta", "pizza", "coffee", "pie", "curry",
         "noodles", "stew", "juice", "cheese", "fish", "apple", "steak", "tacos", "sushi"]
KIND = ["good", "great", "fresh", "tasty", "lovely", "warm", "sweet", "crisp"]
UNKIND = ["bad", "awful", "stale", "bland", "cold", "soggy", "burnt", "sour"]


def prompt_for(item: str) -> str:
    return f"how is the {item} ?"


def response_for(item: str, rng: random.Random, kind: bool) -> str:
    a, b = rng.sample(KIND if kind else UNKIND, 2)
    return f"the {item} is {a} and {b} ."


def is_kind(text: str) -> bool:
    """The gold preference: more kind words than unkind ones."""
    words = text.split()
    return sum(w in KIND for w in words) > sum(w in UNKIND for w in words)


def vocabulary_texts() -> list[str]:
    """Every word the world uses, for building its tokenizer."""
    return [" ".join(ITEMS + KIND + UNKIND + ["how", "is", "the", "?", "and", "."])]


def _as_chat(prompt: str, response: str | None = None):
    user = [{"role": "user", "content": prompt}]
    return user if response is None else (user, [{"role": "assistant", "content": response}])


def sft_records(n: int, seed: int, chat: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = rng.choice(ITEMS)
        prompt, completion = prompt_for(item), response_for(item, rng, kind=i % 2 == 0)
        out.append({"messages": _as_chat(prompt)[:] + [{"role": "assistant", "content": completion}]}
                   if chat else {"prompt": prompt, "completion": completion})
    return out


def preference_records(n: int, seed: int, chat: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        item = rng.choice(ITEMS)
        prompt = prompt_for(item)
        chosen, rejected = response_for(item, rng, True), response_for(item, rng, False)
        if chat:
            p, c = _as_chat(prompt, chosen)
            out.append({"prompt": p, "chosen": c, "rejected": _as_chat(prompt, rejected)[1]})
        else:
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def prompt_records(seed: int, chat: bool = False) -> list[dict]:
    return [{"prompt": _as_chat(prompt_for(item)) if chat else prompt_for(item)} for item in ITEMS]


def write_jsonl(path: str | Path, records: list[dict]) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_dataset(folder: str | Path, seed: int = 0, chat: bool = False, n_sft: int = 512,
                  n_pairs: int = 512, n_eval_pairs: int = 200) -> dict[str, str]:
    """sft.jsonl, prefs.jsonl, prefs_eval.jsonl, prompts.jsonl under ``folder``; returns their paths."""
    folder = Path(folder)
    return {"sft": write_jsonl(folder / "sft.jsonl", sft_records(n_sft, seed, chat)),
            "prefs": write_jsonl(folder / "prefs.jsonl", preference_records(n_pairs, seed + 1, chat)),
            "prefs_eval": write_jsonl(folder / "prefs_eval.jsonl", preference_records(n_eval_pairs, seed + 2, chat)),
            "prompts": write_jsonl(folder / "prompts.jsonl", prompt_records(seed, chat))}


def kind_reward(prompts: list, completions: list[str], **columns) -> list[float]:
    """A rule-based reward with TRL's signature: kind words minus unkind words in the completion
    (a text, or a chat completion's message list)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(w in KIND for w in c.split()) - sum(w in UNKIND for w in c.split())) for c in texts]


def kind_rate(model_dir: str, prompts: list[str], n: int, seed: int) -> tuple[float, list[str]]:
    """Fraction of sampled responses the gold preference calls kind; and the samples."""
    from ..config import GenerationConfig
    from ..models import load_causal_lm, load_tokenizer
    from ..sampling import sample

    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    texts = sample(model, tok, prompts * n, GenerationConfig(max_new_tokens=12, temperature=1.0), seed=seed)
    return sum(map(is_kind, texts)) / len(texts), texts
