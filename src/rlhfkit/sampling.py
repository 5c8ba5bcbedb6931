"""Batched sampling from a causal LM with a KV cache: tokens, log-probs, masks and texts.

One decoding loop serves every stage that samples (PPO / RLOO / GRPO rollouts, evaluation, the
demo); sampling takes most of an RLHF step's time, so it is batched and cached:

- all prompts run together in chunks of ``batch_size`` rows (sorted by length, so a chunk carries
  little padding), left-padded;
- ``position_ids`` are counted over real tokens (attention-mask cumsum - 1) at the prefill and at
  every decode step, so left padding never shifts positions; models with absolute positions
  (GPT-2) give wrong tokens otherwise;
- a ``DynamicCache`` holds keys and values, in buffers allocated once per chunk
  (``kv_cache.PreallocatedLayer``); each decode step feeds one token per row and extends the attention
  mask by one column;
- identical prompts in a chunk (RLOO/GRPO sample ``num_generations`` copies of each) are
  prefilled once; their cached keys/values stay one shared prefix per prompt
  (``PreallocatedLayer.share_rows``: the lean CPU step attends to it once for all copies, any
  other reader gets copied rows);
- tokens are drawn by inverse-CDF sampling (``draw``), one uniform per row;
- a row stops at an end token or when its text contains a stop string. End tokens are decided in
  one place, ``eos_ids``, so that every stage stops on the same set: the tokenizer's EOS, the
  model's generation-config EOS and the chat template's end-of-turn token (a model that ends its
  turn with a token other than the tokenizer's EOS would otherwise run on to the length limit).
  Finished rows are cut out of the batch (and the cache) once a quarter of it is done, and the
  loop ends when every row is done.

Log-probs are those of the full tempered distribution, log softmax(logits / T), *before* top-k /
top-p truncation (for T == 0, greedy, of softmax(logits)). That is the quantity the trainer
recomputes with a plain forward pass, so PPO's ratio pi_theta / pi_old starts at exactly 1;
truncation only changes which tokens get drawn.

The sampling knobs (``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``stop_strings``)
travel as one ``config.GenerationConfig``. ``sample`` (prompts in, texts out) is the small
interface the demo and evaluation use; ``rollout_rows`` turns a rollout into training rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .config import GenerationConfig
from .data.tokenize import prompt_ids as _prompt_ids
from .kv_cache import forward_params, lean_decode_step, new_cache
from .models import position_ids_from_mask, unwrap_peft


@dataclass
class Rollout:
    """Sampled responses, padded to the longest one; row i answers ``prompt_ids[i]``."""

    prompt_ids: list[list[int]]  # unpadded prompt ids, one list per row
    response_ids: torch.Tensor  # (B, T) long, right-padded with the pad id
    logprobs: torch.Tensor  # (B, T) float32, log p(token) under softmax(logits / T) before truncation; 0 on padding
    mask: torch.Tensor  # (B, T) long, 1 on generated tokens up to and including the EOS / stop-string token
    ended: torch.Tensor  # (B,) bool, True where the row ended by EOS or stop string (False: max_new_tokens cut it)
    texts: list[str]  # decoded responses without special tokens, cut before any stop string


# --------------------------------------------------------------------------- end tokens

# End-of-turn markers of common chat templates (ChatML, Llama 3, Gemma, Phi-3, Command-R).
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|END_OF_TURN_TOKEN|>")


def _single_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}


def _end_of_turn_ids(tokenizer) -> list[int]:
    """The chat template's end-of-turn token(s), where one encodes to a single special id."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return []
    found = [i for name in _END_OF_TURN if name in str(template) and (i := _single_id(tokenizer, name)) is not None]
    # Probe: render one assistant turn and take the special token right after its content.
    probe = "rlhfkitprobe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": probe}], tokenize=False)
    except Exception:  # a template may insist on a system turn, alternation, tools, ...
        text = None
    if isinstance(text, str) and probe in text:
        after = tokenizer.encode(text[text.rindex(probe) + len(probe):].lstrip(), add_special_tokens=False)
        if after and after[0] in _special_ids(tokenizer) and after[0] not in (tokenizer.bos_token_id,
                                                                                tokenizer.unk_token_id):
            found.append(after[0])
    return found


def eos_ids(tokenizer, model=None) -> list[int]:
    """The ids that end a response: the tokenizer's EOS, the model's ``generation_config``
    EOS (int or list) and the chat template's end-of-turn token, deduplicated, in that order."""
    ids: list = [tokenizer.eos_token_id]
    if model is not None:
        config = getattr(model, "generation_config", None) or getattr(model, "config", None)
        model_eos = getattr(config, "eos_token_id", None)
        ids += list(model_eos) if isinstance(model_eos, (list, tuple)) else [model_eos]
    ids += _end_of_turn_ids(tokenizer)
    out: list[int] = []
    for i in ids:
        if i is not None and int(i) not in out:
            out.append(int(i))
    return out


# --------------------------------------------------------------------------- one decoding step


def _truncate(logits_BV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus (Holtzman et al. 2020): keep the most likely tokens whose mass reaches top_p."""
    if top_k and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        probs_BV = sorted_BV.softmax(-1)
        drop_BV = probs_BV.cumsum(-1) - probs_BV >= top_p  # mass before this token already reaches top_p
        logits_BV = logits_BV.masked_fill(drop_BV.scatter(1, order_BV, drop_BV), float("-inf"))
    return logits_BV


def _picker(temperature: float, top_k: int, top_p: float,
            generator: torch.Generator | Sequence[torch.Generator] | None, max_new_tokens: int = 0) -> Callable:
    """((B, V) logits, (B,) chunk row of each batch row, step) -> (B,) tokens and their (B,) log-probs
    under the full tempered distribution. ``generator``: one for the chunk, or one per chunk row; a
    row's generator gives its ``max_new_tokens`` uniforms in one draw at the first step (the same
    numbers as one draw per step: a CPU generator's ``rand(n)`` is n successive ``rand(1)``)."""
    truncate = bool(top_k) or top_p < 1.0
    per_row: list = []  # (rows, max_new_tokens) uniforms of the per-row generators

    def pick(logits_BV: torch.Tensor, row_B: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits_BV = logits_BV.float()
        if temperature == 0:
            token_B = logits_BV.argmax(-1)
            return token_B, logits_BV.log_softmax(-1).gather(1, token_B[:, None]).squeeze(1)
        if temperature != 1.0:  # x / 1.0 is x: one (B, V) op a step saved at the RL default
            logits_BV = logits_BV / temperature
        logp_BV = logits_BV.log_softmax(-1)
        probs_BV = _truncate(logits_BV, top_k, top_p).softmax(-1) if truncate else logp_BV.exp()
        if isinstance(generator, (list, tuple)):
            if not per_row:
                per_row.append(torch.stack([torch.rand(max_new_tokens, generator=g) for g in generator]
                                           ).to(probs_BV.device))
            token_B = draw(probs_BV, uniform_B1=per_row[0][row_B, t, None])
        else:
            token_B = draw(probs_BV, generator)
        return token_B, logp_BV.gather(1, token_B[:, None]).squeeze(1)

    return pick


def draw(probs_BV: torch.Tensor, generator: torch.Generator | None = None,
         uniform_B1: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from (B, V) probabilities by inverse-CDF sampling: the first token whose
    cumulative mass exceeds u ~ U[0, total). One uniform per row instead of ``torch.multinomial``'s
    exponential draw per vocabulary entry (~14x faster for a 2k vocabulary on CPU). Tokens of zero
    probability (truncated by top-k / top-p) are never drawn: u < total excludes the flat tail, and
    a flat run inside the CDF is skipped because ``searchsorted(right=True)`` lands past it.
    ``uniform_B1``: the (B, 1) uniforms on [0, 1) to use instead of drawing them from ``generator``."""
    cdf_BV = probs_BV.float().cumsum(-1)
    if uniform_B1 is None:
        uniform_B1 = torch.rand(probs_BV.shape[0], 1, generator=generator, device=probs_BV.device)
    u_B1 = uniform_B1 * cdf_BV[:, -1:]
    return torch.searchsorted(cdf_BV, u_B1, right=True).squeeze(1).clamp_(max=probs_BV.shape[1] - 1)


LEAN_DECODE = True  # kv_cache.lean_decode_step where the model allows it; False: always the model's forward


def _forward_fn(model) -> Callable:
    """model(ids, mask, positions, cache) -> (B, V) logits of the last position only."""
    params = forward_params(model)
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    keep = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in params), {})
    lean = lean_decode_step(model) if LEAN_DECODE else None  # decode steps without the forward's Python

    def forward(ids_BS, mask_BS, positions_BS, cache):
        if lean is not None and ids_BS.shape[1] == 1 and cache.get_seq_length() > 0:
            logits = lean(ids_BS, mask_BS, positions_BS, cache)
            if logits is not None:
                return logits
        out = model(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions_BS, use_cache=True,
                    **{cache_kw: cache}, **keep)
        return out.logits[:, -1]

    return forward


class _StopStrings:
    """Which rows' generated text now contains a stop string.

    Only the last ``window`` tokens are decoded each step: a row stops at the first step its text
    contains a stop string, so a new match must lie in the text the newest tokens added. The
    window (4 tokens per character, plus slack) covers byte-level tokens that split a character.
    """

    def __init__(self, tokenizer, strings: Sequence[str]):
        self.tokenizer, self.strings = tokenizer, list(strings)
        self.window = 4 * max(map(len, self.strings)) + 8

    def hits(self, generated: list[list[int]]) -> list[bool]:
        texts = self.tokenizer.batch_decode([g[-self.window:] for g in generated], skip_special_tokens=True)
        return [any(s in t for s in self.strings) for t in texts]


# --------------------------------------------------------------------------- the loop


def _decode_chunk(forward, pick, rows: list[list[int]], max_new_tokens: int, end_ids: torch.Tensor,
                  stops: _StopStrings | None, pad_id: int, model):
    """Sample one chunk of left-padded prompts. Returns (B, T) tokens, log-probs, mask and (B,) ended."""
    device = end_ids.device
    B, width = len(rows), max(map(len, rows))
    ids_BS = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    attn_BS = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    tokens_BT = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logp_BT = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=device)
    mask_BT = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    ended_B = torch.zeros(B, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(B)]  # host copy, only for stop strings

    cache = new_cache(model, width + max_new_tokens)
    first, inverse = _unique_rows(rows)
    if len(first) < B:  # e.g. RLOO/GRPO's num_generations copies of each prompt: prefill each once
        keep = torch.tensor(first, device=device)
        logits_bV = forward(ids_BS[keep], attn_BS[keep], position_ids_from_mask(attn_BS[keep]), cache)
        inverse_B = torch.tensor(inverse, device=device)
        for layer in getattr(cache, "layers", None) or [cache]:  # copies of a prompt share its cached keys/values
            (layer.share_rows if hasattr(layer, "share_rows") else layer.batch_select_indices)(inverse_B)
        logits_bV = logits_bV[inverse_B]
    else:
        logits_bV = forward(ids_BS, attn_BS, position_ids_from_mask(attn_BS), cache)
    row_b = torch.arange(B, device=device)  # chunk row of each row still in the batch (b <= B)
    pos_b1 = position_ids_from_mask(attn_BS)[:, -1:]  # the newest token's; +1 a step (not recounted)
    live_b = torch.ones(B, dtype=torch.bool, device=device)
    steps = 0
    for t in range(max_new_tokens):
        token_b, logp_b = pick(logits_bV, row_b, t)
        # Rows that finished but are still in the batch write pad / 0: where(), no host sync.
        tokens_BT[row_b, t] = token_b.where(live_b, pad_id)
        logp_BT[row_b, t] = logp_b.where(live_b, 0.0)
        mask_BT[row_b, t] = live_b.long()
        steps = t + 1
        done_b = live_b & torch.isin(token_b, end_ids)
        if stops is not None:
            at, toks = row_b.tolist(), token_b.tolist()
            live = [b for b, ok in enumerate(live_b.tolist()) if ok]
            for b in live:
                generated[at[b]].append(toks[b])
            flags = [False] * len(at)
            for b, hit in zip(live, stops.hits([generated[at[b]] for b in live])):
                flags[b] = hit
            done_b |= torch.tensor(flags, device=device)
        ended_B[row_b] |= done_b
        live_b &= ~done_b
        n_live = int(live_b.sum())
        if n_live == 0 or t == max_new_tokens - 1:
            break
        if 4 * (len(live_b) - n_live) >= len(live_b):  # drop finished rows: their compute is wasted
            keep_b = live_b.nonzero().squeeze(1)
            cache.batch_select_indices(keep_b)
            attn_BS, row_b, token_b, live_b = attn_BS[keep_b], row_b[keep_b], token_b[keep_b], live_b[keep_b]
            pos_b1 = pos_b1[keep_b]
        attn_BS = torch.cat([attn_BS, attn_BS.new_ones(len(attn_BS), 1)], dim=1)
        pos_b1 = pos_b1 + 1
        logits_bV = forward(token_b[:, None], attn_BS, pos_b1, cache)
    return tokens_BT[:, :steps], logp_BT[:, :steps], mask_BT[:, :steps], ended_B


def _unique_rows(rows: list[list[int]]) -> tuple[list[int], list[int]]:
    """(index of the first occurrence of each distinct row, position of each row's copy among them)."""
    seen: dict[tuple, int] = {}
    first, inverse = [], []
    for i, r in enumerate(rows):
        key = tuple(r)
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse.append(seen[key])
    return first, inverse


def _check(gen: GenerationConfig, batch_size: int) -> None:
    n, t, k, p = gen.max_new_tokens, gen.temperature, gen.top_k, gen.top_p
    if n < 0 or t < 0 or k < 0 or batch_size < 1 or not 0.0 < p <= 1.0:
        raise ValueError("need max_new_tokens >= 0, temperature >= 0, top_k >= 0, 0 < top_p <= 1, batch_size >= 1; "
                         f"got {n}, {t}, {k}, {p}, {batch_size}")


def generate(model, tokenizer, prompt_ids: list[list[int]], gen: GenerationConfig, *,
             eos_token_ids: Sequence[int] | None = None,
             generator: torch.Generator | Sequence[torch.Generator] | None = None, batch_size: int = 64) -> Rollout:
    """Sample up to ``gen.max_new_tokens`` tokens after each prompt (unpadded id lists).

    ``gen`` holds the sampling knobs (any ``GenerationConfig``, e.g. a stage config that extends
    it): ``temperature == 0`` is greedy. ``top_k`` / ``top_p`` truncate the distribution tokens are drawn
    from, never the one log-probs are reported under (see the module docstring). ``eos_token_ids``
    defaults to ``eos_ids(tokenizer, model)``; a stop string that is exactly one special token
    (e.g. ``"<|im_end|>"``) counts as an end id, since decoded texts skip special tokens.
    ``generator`` (on the model's device) makes sampling reproducible; a list of CPU generators, one
    per prompt, gives each row its own random stream, so a row draws the same tokens whatever else
    is in the batch (how online RL samples alike on 1 and N processes); each such generator is
    drawn ``max_new_tokens`` uniforms at once, whether or not its row runs that long. Tensors come back on the
    model's device (ordinary tensors, not inference tensors). The model runs in eval mode under
    ``torch.inference_mode``; its train/eval mode is restored.
    """
    _check(gen, batch_size)
    max_new_tokens, stop_strings = gen.max_new_tokens, gen.stop_strings
    if any(len(r) == 0 for r in prompt_ids):
        raise ValueError("every prompt needs at least one token (add BOS or use the chat template)")
    model = unwrap_peft(model)  # a LoRA policy: the model with its adapter layers, for the cache-aware forward
    device = next(model.parameters()).device
    ends = list(eos_ids(tokenizer, model) if eos_token_ids is None else eos_token_ids)
    special = _special_ids(tokenizer)
    token_stops = {s: i for s in stop_strings if (i := _single_id(tokenizer, s)) is not None and i in special}
    ends += [i for i in token_stops.values() if i not in ends]
    text_stops = [s for s in stop_strings if s and s not in token_stops]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
    end_ids = torch.tensor(ends or [-1], dtype=torch.long, device=device)
    stops = _StopStrings(tokenizer, text_stops) if text_stops else None

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_row = isinstance(generator, (list, tuple))
    if per_row and len(generator) != len(prompt_ids):
        raise ValueError(f"{len(generator)} generators for {len(prompt_ids)} prompts: give one per prompt")
    forward = _forward_fn(model)
    picks = [_picker(gen.temperature, gen.top_k, gen.top_p, [generator[i] for i in c] if per_row else generator,
                     max_new_tokens) for c in chunks]
    was_training = model.training
    model.eval()
    try:
        # inference_mode, not just no_grad: the loop's many small ops skip the autograd dispatch
        # layer (~5% of a CPU rollout); its tensors are copied into ordinary ones below
        with torch.inference_mode():
            pieces = [_decode_chunk(forward, pick, [list(prompt_ids[i]) for i in c], max_new_tokens, end_ids,
                                    stops, pad_id, model) if max_new_tokens else None for c, pick in zip(chunks, picks)]
    finally:
        model.train(was_training)

    n, T = len(prompt_ids), max([p[0].shape[1] for p in pieces if p is not None], default=0)
    response = torch.full((n, T), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, T, dtype=torch.float32, device=device)
    mask = torch.zeros(n, T, dtype=torch.long, device=device)
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    for chunk, piece in zip(chunks, pieces):
        if piece is None:
            continue
        idx, (tok, lp, m, e), width = torch.tensor(chunk, device=device), piece, piece[0].shape[1]
        response[idx, :width], logprobs[idx, :width], mask[idx, :width], ended[idx] = tok, lp, m, e
    texts = tokenizer.batch_decode([r[m.bool()].tolist() for r, m in zip(response.cpu(), mask.cpu())],
                                   skip_special_tokens=True)
    return Rollout([list(p) for p in prompt_ids], response, logprobs, mask, ended,
                   [_cut(t, text_stops) for t in texts])


def _cut(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest stop string."""
    return text[:min([i for s in stop_strings if (i := text.find(s)) >= 0], default=len(text))]


def sample(model, tokenizer, prompts: list, gen: GenerationConfig, *, batch_size: int = 32,
           seed: int = 0) -> list[str]:
    """One completion per prompt (string or chat messages), decoded without special tokens, stripped."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = [_prompt_ids(tokenizer, p) for p in prompts]
    rollout = generate(model, tokenizer, rows, gen, generator=generator, batch_size=batch_size)
    return [t.strip() for t in rollout.texts]


def rollout_rows(prompt_rows: list[list[int]], rollout: Rollout, pad_id: int) -> tuple[torch.Tensor, ...]:
    """Prompt + response as right-padded training rows: (ids (N, T), attention mask (N, T),
    response mask (N, T-1), sampler log-probs (N, T-1)), the per-token tensors in the shifted
    layout where position t concerns token t+1 (whole-batch ops, on the CPU)."""
    response_NR, logp_NR = rollout.response_ids.cpu(), rollout.logprobs.float().cpu()
    N, R = response_NR.shape
    n_N = rollout.mask.cpu().sum(1)  # response lengths (each mask is a prefix of its row)
    plen_N = torch.tensor([len(p) for p in prompt_rows], dtype=torch.long)
    width = int((plen_N + n_N).max())
    ids = torch.full((N, width), pad_id, dtype=torch.long)
    P = int(plen_N.max())
    ids[:, :P] = torch.tensor([list(p) + [pad_id] * (P - len(p)) for p in prompt_rows], dtype=torch.long)
    keep_NR = torch.arange(R) < n_N[:, None]
    row_n = torch.arange(N)[:, None].expand(N, R)[keep_NR]
    col_n = (plen_N[:, None] + torch.arange(R))[keep_NR]  # the response token's column
    ids[row_n, col_n] = response_NR[keep_NR]
    attn = (torch.arange(width) < (plen_N + n_N)[:, None]).long()
    mask, old = torch.zeros(N, width - 1), torch.zeros(N, width - 1)
    mask[row_n, col_n - 1] = 1.0
    old[row_n, col_n - 1] = logp_NR[keep_NR]
    return ids, attn, mask, old
