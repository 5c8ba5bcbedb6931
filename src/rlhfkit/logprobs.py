"""Every log-prob computation of a causal LM, in one place.

- ``target_logprobs``: log p(token | tokens before it) at the trained positions of a padded or
  packed batch, running the LM head only there (``split_head``); ``batch_logprobs`` /
  ``response_logps`` apply it to a ``data.tokenize`` batch (the SFT and DPO trainers).
- ``policy_logprobs`` / ``response_logprobs``: the online trainers' per-token log-probs of sampled
  rows (``sampling.rollout_rows``), at the sampling temperature.
- Shared-prompt scoring (``plan``, ``shared_prompt_logprobs``, ``prompt_sharing_works``): several
  responses to one prompt with the prompt computed once.
- ``packing_works``: whether a model computes packed sequences exactly as padded ones;
  ``tree_pairs_work``: whether it scores pairs with a shared prompt (``data.pair_tree``) exactly.

Shared-prompt scoring: RLOO and GRPO sample ``num_generations`` responses per prompt, and the reference and policy
forward passes of a step then run each prompt ``num_generations`` times. Here the distinct
prompts run once (left-padded, with a KV cache that stays in the autograd graph), the cache rows
are copied to every response of that prompt, and the responses run as a second batch that
attends to the copied prompt keys and values. The result is the same log-probs (and gradients:
the cache copy is an indexing op, so each response's gradient flows back into the one prompt
computation) as the plain forward over prompt + response, for ``G x P`` fewer prompt tokens
becoming ``P``. ``prompt_sharing_works`` checks that equality on the actual model once, the way
``packing_works`` checks packing; ``plan`` decides per batch whether sharing saves work
(responses are right-padded here, the plain path packs them without padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from .data.pair_tree import tree_pairs
from .data.tokenize import TokenizedPair, layout
from .kv_cache import forward_params, new_cache
from .losses import sequence_logprobs, token_logprobs
from .models import packed_rewards, position_ids_from_mask, reward_forward, unwrap_peft


def causal_lm_logits(model: PreTrainedModel, input_ids_BT: torch.Tensor,
                     attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits; positions come from the mask so left- and right-padded rows agree."""
    out = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False)
    return out.logits


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, LM head) when logits are exactly head(backbone's last hidden state), else None
    (logit soft-capping or scaling after the head, DDP wrappers, ...). A peft wrapper is looked
    through: its LoRA layers sit inside the backbone, so backbone + head still run the adapter."""
    model = unwrap_peft(model)
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale",
                                                                  "logits_scaling", "output_multiplier_scale")):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or backbone is None or not type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return None
    return backbone, head


def target_logprobs(model: PreTrainedModel, input_ids_BT: torch.Tensor, loss_mask_BT: torch.Tensor,
                    attention_mask_BT: torch.Tensor | None = None,
                    position_ids_BT: torch.Tensor | None = None, temperature: float = 1.0,
                    return_logits: bool = False):
    """log p(token t | tokens before it) for every token t with ``loss_mask`` 1 (t >= 1), as an (N,)
    vector in row-major order. Padded batches pass ``attention_mask``; packed ones (see
    ``data.tokenize.layout``) pass ``position_ids`` and no mask.

    Less work than full logits: the LM head (a V x H matmul per position, and the (B, T, V)
    tensors after it) runs only at the N positions that predict a trained token, not at prompt or
    padding positions. Models whose logits are not a plain head over the last hidden state take
    the full-logits path. Log-probs are of softmax(logits / temperature); with ``return_logits``
    the (N, V) tempered logits come back too.
    """
    if position_ids_BT is None:
        position_ids_BT = position_ids_from_mask(attention_mask_BT)
    select_BT = loss_mask_BT[:, 1:].bool()
    targets_N = input_ids_BT[:, 1:][select_BT]
    split = split_head(model)
    kw = dict(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids_BT,
              use_cache=False)
    if split is None:
        logits_NV = model(**kw).logits[:, :-1][select_BT]
    else:
        backbone, head = split
        logits_NV = head(backbone(**kw).last_hidden_state[:, :-1][select_BT])
    if temperature != 1.0:
        logits_NV = logits_NV.float() / temperature
    logps_N = token_logprobs(logits_NV, targets_N)
    return (logps_N, logits_NV) if return_logits else logps_N


def batch_logprobs(model: PreTrainedModel, batch: dict) -> torch.Tensor:
    """(N,) log-probs of the trained tokens (``loss_mask`` 1) of a padded or packed batch from
    ``data.tokenize`` (``target_logprobs`` with the batch's own mask or positions)."""
    return target_logprobs(model, batch["input_ids"], batch["loss_mask"], batch.get("attention_mask"),
                           batch.get("position_ids"))


def response_logps(model: PreTrainedModel, batch: dict) -> torch.Tensor:
    """Summed log-probs of each sequence's response tokens, (S,), from a padded or packed batch:
    for a preference batch 2B values, chosen then rejected (``losses.sequence_logprobs`` over the
    per-token values, by the batch's sequence ids)."""
    seq_N = batch["seq_id"][:, 1:][batch["loss_mask"][:, 1:].bool()]
    if "tree_mask" in batch:  # data.pair_tree: the prompt once; each target from its own source position
        split, src_N = split_head(model), batch["tree_src"]
        kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["tree_mask"],
                  use_cache=False)
        if split is None:  # a wrapper (DDP, ...): full logits, then the sources' rows
            logits_NV = model(**kw).logits.flatten(0, 1)[src_N]
        else:
            logits_NV = split[1](split[0](**kw).last_hidden_state.flatten(0, 1)[src_N])
        logps_N = token_logprobs(logits_NV, batch["input_ids"][:, 1:][batch["loss_mask"][:, 1:].bool()])
        return sequence_logprobs(logps_N, seq_N, len(batch["last_index"]))
    return sequence_logprobs(batch_logprobs(model, batch), seq_N, len(batch["last_index"]))


def policy_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0):
    """(N, T-1) log-probs of the next tokens at ``temperature``, and the (N, T-1, V) logits."""
    logits = causal_lm_logits(model, input_ids, attention_mask)[:, :-1].float() / temperature
    return token_logprobs(logits, input_ids[:, 1:]), logits


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0, pack: bool = True, share_prompts: bool = False):
    """:func:`policy_logprobs` with less work, for rows from ``sampling.rollout_rows``: (N, T-1) log-probs
    at the response positions ``mask`` marks (0 elsewhere) and the (n, V) tempered logits there.

    With ``pack`` the rows are packed without padding (``data.tokenize.layout``) and the LM head runs
    only at response positions (``target_logprobs``); the values are scattered back into the
    shifted (N, T-1) layout, differentiably. With ``share_prompts`` (for models where
    ``prompt_sharing_works``), rows that repeat a prompt compute it once when that saves work
    (``shared_prompt_logprobs``).
    """
    if share_prompts:
        split = plan(input_ids, attention_mask, mask)
        out = shared_prompt_logprobs(model, split, tuple(mask.shape), temperature) if split else None
        if out is not None:
            return out
    lengths = attention_mask.sum(1).tolist()
    ids_cpu, mask_cpu = input_ids.cpu(), mask.cpu()
    rows = [ids_cpu[i, :n].tolist() for i, n in enumerate(lengths)]
    loss_masks = [[0] + mask_cpu[i, :n - 1].long().tolist() for i, n in enumerate(lengths)]
    batch = {k: v.to(input_ids.device) for k, v in layout(rows, loss_masks, 0, pack).items()}
    logps_n, logits_nV = target_logprobs(model, batch["input_ids"], batch["loss_mask"], batch.get("attention_mask"),
                                         batch.get("position_ids"), temperature=temperature, return_logits=True)
    select = batch["loss_mask"][:, 1:].bool()
    row_n = batch["seq_id"][:, 1:][select]
    if pack:
        col_n = batch["position_ids"][:, 1:][select] - 1
    else:
        col_n = torch.arange(select.shape[1], device=select.device).expand_as(select)[select]
    out = torch.zeros(mask.shape, dtype=logps_n.dtype, device=logps_n.device)
    return out.index_put((row_n, col_n), logps_n), logits_nV


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
    """The split of rows from ``sampling.rollout_rows`` (right-padded ids, response mask in the
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
    split = split_head(model)
    if split is None:
        return None
    backbone, head = split
    device = next(model.parameters()).device
    width = max(map(len, p.prompts))
    prompt_ids = torch.tensor([[0] * (width - len(q)) + q for q in p.prompts], device=device)       # (U, P)
    prompt_attn = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in p.prompts], device=device)
    cache = new_cache(model)
    cache_kw = "cache" if "cache" in forward_params(backbone) else "past_key_values"
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


def check_tolerance(model) -> float:
    """Tolerance of the start-up equality checks (packed == padded, shared == plain): 1e-4 in fp32;
    3e-2 where the model computes in bf16/fp16 (its weights, or autocast on its device), rounding of
    different kernels (FlashAttention varlen vs padded) only. Rows attending across a packing
    boundary differ by far more."""
    p = next(model.parameters())
    half = p.dtype in (torch.bfloat16, torch.float16) or (p.device.type == "cuda" and torch.is_autocast_enabled("cuda"))
    return 3e-2 if half else 1e-4


@torch.no_grad()
def prompt_sharing_works(model) -> bool:
    """Whether the shared-prompt path gives this model's plain log-probs (``check_tolerance``), on three rows
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
        tol = check_tolerance(model)
        return got is not None and bool(torch.allclose(got[0].float(), want.float(), atol=tol, rtol=tol))
    except Exception:  # a model whose forward rejects a cache with grad, a 2D mask over past + new, ...
        return False
    finally:
        model.train(was_training)


@torch.no_grad()
def packing_works(model: PreTrainedModel, reward: bool = False) -> bool:
    """Whether this model computes packed sequences (position resets, no mask) exactly as padded
    ones, checked on two short sequences: models that ignore the position resets would let packed
    sequences attend to each other. Callers fall back to padding when this is False."""
    model = unwrap_peft(model)
    vocab = model.config.vocab_size
    rows = [[(7 * i + 3) % vocab for i in range(6)], [(5 * i + 11) % vocab for i in range(4)],
            [(3 * i + 5) % vocab for i in range(2)]]  # packs as [6], [4, 2]
    masks = [[1] * len(r) for r in rows]
    dev = next(model.parameters()).device
    padded = {k: v.to(dev) for k, v in layout(rows, masks, 0, pack=False).items()}
    packed = {k: v.to(dev) for k, v in layout(rows, masks, 0, pack=True).items()}
    assert packed["input_ids"].shape[0] == 2
    was_training = model.training
    model.eval()
    try:
        if reward:
            if not hasattr(model, "score"):
                return False
            want = reward_forward(model, padded["input_ids"], padded["attention_mask"])
            got = packed_rewards(model, packed["input_ids"], packed["position_ids"], packed["last_index"])
        else:
            full = causal_lm_logits(model, padded["input_ids"], padded["attention_mask"])[:, :-1]
            want = token_logprobs(full[padded["loss_mask"][:, 1:].bool()],
                                  padded["input_ids"][:, 1:][padded["loss_mask"][:, 1:].bool()])
            got = target_logprobs(model, packed["input_ids"], packed["loss_mask"],
                                  position_ids_BT=packed["position_ids"])
        tol = check_tolerance(model)
        return got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), atol=tol, rtol=tol))
    except Exception:  # a model whose forward rejects the packed form
        return False
    finally:
        model.train(was_training)


def tree_pairs_work(model: PreTrainedModel, reward: bool = True) -> bool:
    """Whether this reward model scores pairs (``reward``), or this causal LM gives their response
    log-probs, laid out with a shared prompt (``data.pair_tree``, an explicit boolean attention
    mask) exactly as from the padded prompt + response rows, checked on two short pairs. Models
    that ignore or reject a 4D mask fall back to plain packing (False)."""
    model = unwrap_peft(model)
    cfg = model.config  # a 4D mask replaces the model's own, sliding window included: too short to probe
    if (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)) or (
            not hasattr(model, "score") if reward else split_head(model) is None):
        return False
    vocab = model.config.vocab_size
    toks = lambda n, a, b: [(a * i + b) % vocab for i in range(n)]  # noqa: E731
    pairs = [TokenizedPair(toks(3, 7, 3), toks(4, 5, 11), toks(2, 3, 5)), TokenizedPair(toks(2, 11, 1), toks(1, 2, 9), toks(3, 13, 2))]
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    dev = next(model.parameters()).device
    masks = [[0] * len(p.prompt_ids) + [1] * len(p.chosen_ids) for p in pairs] + [
        [0] * len(p.prompt_ids) + [1] * len(p.rejected_ids) for p in pairs]
    padded = {k: v.to(dev) for k, v in layout(rows, masks, 0).items()}
    tree = {k: v.to(dev) for k, v in tree_pairs(pairs, 0).items()}
    was_training = model.training
    model.eval()
    try:
        if reward:
            want = reward_forward(model, padded["input_ids"], padded["attention_mask"])
            got = packed_rewards(model, tree["input_ids"], tree["position_ids"], tree["last_index"], tree["tree_mask"])
        else:
            want, got = response_logps(model, padded), response_logps(model, tree)
        return got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), atol=1e-4, rtol=1e-4))
    except Exception:  # a model whose forward rejects the mask
        return False
    finally:
        model.train(was_training)
