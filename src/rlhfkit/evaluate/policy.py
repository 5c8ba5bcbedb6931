"""Sample a policy on prompts and measure what came out: scores, length, and KL to a reference.

The KL is estimated from the policy's own samples: KL(pi || ref) = E_{y ~ pi}[log pi(y|x) -
log ref(y|x)], the summed per-token log-ratio averaged over samples (unbiased; a single sample
can be negative). Sampling is at temperature 1 so the estimate is of the policy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import GenerationConfig
from ..data.tokenize import prompt_ids
from ..logprobs import policy_logprobs
from ..losses import masked_sum
from ..models import load_causal_lm, load_tokenizer
from ..sampling import generate, rollout_rows


@dataclass
class Samples:
    """``n`` samples per prompt, prompt-major, with each sample's summed log-prob under the policy."""

    texts: list[str]
    lengths: list[int]          # response tokens
    logps: torch.Tensor         # (N,)
    ended: list[bool]
    rows: list[list[int]]       # prompt ids, one per sample
    rollout: object


def sample_policy(model_dir: str, prompts: list, n: int = 1, max_new_tokens: int = 32, seed: int = 0,
                  device: str | torch.device = "cpu", max_prompt_length: int = 256, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, stop_strings: Sequence[str] = ()) -> Samples:
    """``n`` samples per prompt; the sampling settings are a ``GenerationConfig``'s (``generation_kwargs``)."""
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir).to(device)
    rows = [prompt_ids(tok, p)[-max_prompt_length:] for p in prompts for _ in range(n)]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           stop_strings=list(stop_strings))
    rollout = generate(model, tok, rows, gen, generator=torch.Generator(device=device).manual_seed(seed))
    logps = (rollout.logprobs * rollout.mask).sum(1).float().cpu()
    return Samples(rollout.texts, rollout.mask.sum(1).tolist(), logps, rollout.ended.tolist(), rows, rollout)


@torch.no_grad()
def logprobs_under(model_dir: str, samples: Samples, device: str | torch.device = "cpu",
                   batch_size: int = 64) -> torch.Tensor:
    """(N,) summed log-probs of the sampled responses under another model (same tokenizer)."""
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir).to(device).eval()
    ids, attn, mask, _ = rollout_rows(samples.rows, samples.rollout, tok.pad_token_id)
    out = []
    for i in range(0, ids.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        logp, _ = policy_logprobs(model, ids[sl].to(device), attn[sl].to(device))
        out.append(masked_sum(logp, mask[sl].to(device), dim=1).float().cpu())
    return torch.cat(out)


def kl_to_reference(samples: Samples, ref_dir: str, device: str | torch.device = "cpu") -> float:
    """Sequence-level KL(policy || ref) estimated from the policy's samples, in nats."""
    return float((samples.logps - logprobs_under(ref_dir, samples, device)).mean())
