"""Log-probs of several responses to one prompt with the prompt computed once.

RLOO and GRPO sample ``num_generations`` responses per prompt, and the reference and policy
forward passes of a step then run each prompt ``num_generations`` times. Here the distinct
prompts run once (left-padded, with a KV cache that stays in the autograd graph), the cache rows
are copied to every response of that prompt, and the responses run as a second batch that
attends to the copied prompt keys and values. The result is the same log-probs (and gradients:
the cache copy is an indexing op, so each response's gradient flows back into the one prompt
computation) as the plain forward over prompt + response, for ``G x P`` fewer prompt tokens
becoming ``P``. ``prompt_sharing_works`` checks that equality on the actual model once, the way
``models.packing_works`` checks packing; ``plan`` decides per batch whether sharing saves work
(responses are right-padded here, the plain path packs them without padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import _forward_params, _new_cache, response_logprobs
from .losses import token_logprobs
from .models import _split_head, position_ids_from_mask

# Share only when it computes at most this fraction of the tokens of the packed plain path.
WORTH_IT = 0.85


@dataclass
class Plan:
    """How a batch of prompt + response rows splits: row i = prompts[owner[i]] + responses[i]."""

    prompts: list[list[int]]      # distinct prompts
    owner: list[int]              # (N,) index into prompts
    responses: list[list[int]]    # (N,) response ids
    starts: list[int]             # (N,) prompt length of row i (its first response token's index)


def plan(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
         worth_it: float = WORTH_IT) -> Plan | None:
    """The split of rows from ``generation.rollout_rows`` (right-padded ids, response mask in the
    shifted layout), or None when sharing would compute more than ``worth_it`` times the tokens of
    the plain path or a row's response is not one contiguous run after its prompt."""
    lengths = attention_mask.sum(1).tolist()
    ids, resp = input_ids.cpu().tolist(), mask.cpu()
    prompts: dict[tuple, int] = {}
    owner, responses, starts = [], [], []
    for i, n in enumerate(lengths):
        marked = resp[i, :n - 1].nonzero().squeeze(1)
        if len(marked) == 0:
            return None
        start = int(marked[0]) + 1  # mask[t] = 1 marks token t + 1 as a response token
        if len(marked) != n - start:  # not prompt-then-response: leave it to the plain path
            return None
        owner.append(prompts.setdefault(tuple(ids[i][:start]), len(prompts)))
        responses.append(ids[i][start:n])
        starts.append(start)
    distinct = [list(p) for p in prompts]
    shared_cost = len(distinct) * max(map(len, distinct)) + len(responses) * max(map(len, responses))
    if shared_cost > worth_it * sum(lengths):
        return None
    return Plan(distinct, owner, responses, starts)


def shared_prompt_logprobs(model, p: Plan, shape: tuple[int, int], temperature: float = 1.0):
    """(N, T-1) log-probs of the response tokens in the shifted layout of ``shape`` (0 elsewhere)
    and the (n, V) tempered logits that gave them, computing each distinct prompt once.
    Returns None when the model's logits are not a plain head over its backbone."""
    split = _split_head(model)
    if split is None:
        return None
    backbone, head = split
    device = next(model.parameters()).device
    width = max(map(len, p.prompts))
    prompt_ids = torch.tensor([[0] * (width - len(q)) + q for q in p.prompts], device=device)       # (U, P)
    prompt_attn = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in p.prompts], device=device)
    cache = _new_cache(model)
    cache_kw = "cache" if "cache" in _forward_params(backbone) else "past_key_values"
    hidden_UPH = backbone(input_ids=prompt_ids, attention_mask=prompt_attn,
                          position_ids=position_ids_from_mask(prompt_attn), use_cache=True,
                          **{cache_kw: cache}).last_hidden_state
    owner_N = torch.tensor(p.owner, device=device)
    cache.batch_select_indices(owner_N)  # each response gets its prompt's keys/values (differentiable)
    rwidth = max(map(len, p.responses))
    resp_ids = torch.tensor([r + [0] * (rwidth - len(r)) for r in p.responses], device=device)     # (N, R)
    resp_attn = torch.tensor([[1] * len(r) + [0] * (rwidth - len(r)) for r in p.responses], device=device)
    plen_N = prompt_attn.sum(1)[owner_N]
    hidden_NRH = backbone(input_ids=resp_ids, attention_mask=torch.cat([prompt_attn[owner_N], resp_attn], 1),
                          position_ids=plen_N[:, None] + torch.arange(rwidth, device=device),
                          use_cache=True, **{cache_kw: cache}).last_hidden_state
    # The state that predicts response token j: the prompt's last for j = 0, response token j-1's after.
    before_NRH = torch.cat([hidden_UPH[:, -1][owner_N][:, None], hidden_NRH[:, :-1]], 1)
    select_NR = resp_attn.bool()
    logits_nV = head(before_NRH[select_NR])
    if temperature != 1.0:
        logits_nV = logits_nV.float() / temperature
    logps_n = token_logprobs(logits_nV, resp_ids[select_NR])
    rows_n = torch.arange(len(p.responses), device=device)[:, None].expand_as(select_NR)[select_NR]
    cols_n = (torch.tensor(p.starts, device=device)[:, None] - 1 + torch.arange(rwidth, device=device))[select_NR]
    out = torch.zeros(shape, dtype=logps_n.dtype, device=device)
    return out.index_put((rows_n, cols_n), logps_n), logits_nV


@torch.no_grad()
def prompt_sharing_works(model) -> bool:
    """Whether the shared-prompt path gives this model's plain log-probs (to 1e-4), on three rows
    where two share a prompt; callers fall back to the plain path when it does not."""
    vocab = model.config.vocab_size
    prompt_a, prompt_b = [(7 * i + 3) % vocab for i in range(5)], [(5 * i + 11) % vocab for i in range(3)]
    rows = [prompt_a + [(3 * i + 5) % vocab for i in range(4)], prompt_a + [(11 * i + 2) % vocab for i in range(2)],
            prompt_b + [(13 * i + 1) % vocab for i in range(3)]]
    starts = [5, 5, 3]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    mask = torch.zeros(len(rows), width - 1)
    for i, (r, s) in enumerate(zip(rows, starts)):
        mask[i, s - 1:len(r) - 1] = 1
    dev = next(model.parameters()).device
    ids, attn, mask = ids.to(dev), attn.to(dev), mask.to(dev)
    split = plan(ids, attn, mask, worth_it=float("inf"))
    was_training = model.training
    model.eval()
    try:
        want = response_logprobs(model, ids, attn, mask, pack=False)[0]
        got = shared_prompt_logprobs(model, split, tuple(mask.shape))
        return got is not None and bool(torch.allclose(got[0].float(), want.float(), atol=1e-4, rtol=1e-4))
    except Exception:  # a model whose forward rejects a cache with grad, a 2D mask over past + new, ...
        return False
    finally:
        model.train(was_training)

