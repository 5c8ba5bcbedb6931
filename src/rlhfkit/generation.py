"""Batched sampling from a causal LM.

For now a thin layer over ``transformers``' ``generate`` with left padding and a seeded
generator; the interface (prompts in, completion texts out) is what callers rely on.
"""

from __future__ import annotations

import torch

from .data.tokenize import prompt_ids


@torch.no_grad()
def sample(model, tokenizer, prompts: list, max_new_tokens: int = 32, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 32, seed: int = 0) -> list[str]:
    """One completion per prompt (string or chat messages), decoded without special tokens."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    model.eval()
    out: list[str] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature or None, top_p=top_p,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return [t.strip() for t in out]
