"""The key/value cache of a causal LM forward, shared by the sampler and shared-prompt scoring.

``new_cache`` makes a ``transformers`` ``DynamicCache`` whose full-attention layers can write into
buffers allocated once (``PreallocatedLayer``) instead of concatenating a new tensor every step;
``forward_params`` names the keywords a model's forward takes (its cache keyword was renamed in
transformers 5.x), looking through a ``peft`` wrapper.
"""

from __future__ import annotations

import inspect

import torch


def forward_params(model) -> set[str]:
    """The keyword names ``model.forward`` takes (a ``peft`` wrapper's base model's, where the
    wrapper's own forward does not name the cache)."""
    params = set(inspect.signature(model.forward).parameters)
    if not params & {"cache", "past_key_values"} and hasattr(model, "get_base_model"):  # PEFT wrapper
        return forward_params(model.get_base_model())
    return params


def new_cache(model, capacity: int = 0):
    """A ``DynamicCache``; with ``capacity`` its full-attention layers write into buffers of that many
    positions (:class:`PreallocatedLayer`) instead of concatenating a new tensor every step."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)  # sliding-window layers get their own cache type
    except TypeError:  # transformers 4.x
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if capacity and layers and PreallocatedLayer is not None:
        for i, layer in enumerate(layers):
            if type(layer) is _DynamicLayer:  # exactly the plain layer: subclasses keep their own update
                layers[i] = PreallocatedLayer(capacity)
    return cache


try:  # transformers >= 4.56 builds caches from per-layer objects
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # pragma: no cover - older transformers: plain DynamicCache
    _DynamicLayer = None


if _DynamicLayer is not None:
    class PreallocatedLayer(_DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in (B, H, capacity, D) buffers.

        ``DynamicLayer.update`` concatenates: each decode step copies the whole cache into a freshly
        allocated tensor, quadratic in the length, and on CPU each large allocation page-faults anew
        (63% of a decode loop's time in a profile of the 2.8M-parameter benchmark model). Here a step
        writes one column in place and ``keys`` / ``values`` are views of the filled prefix, so
        attention sees exactly what the concatenating layer would give it.
        """

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity

        prefix: tuple | None = None  # (keys, values) of the shared rows (``share_rows``), else None
        rows: torch.Tensor | None = None  # (B,) the shared row each batch row continues
        slots: tuple | None = None  # ``_slots`` of ``rows``, computed once per ``rows``

        def update(self, key_states, value_states, *args, **kwargs):
            self._unshare()
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._k = self._v = None
                self.length = 0
            end = self.length + key_states.shape[-2]
            if self._k is None or end > self._k.shape[-2]:
                self._resize(max(end, self.capacity), key_states, value_states)
            self._k[:, :, self.length:end] = key_states
            self._v[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

        def _resize(self, capacity: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """New buffers of ``capacity`` positions (keys and values may differ in head size)."""
            k = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[-1])
            if self._k is not None:
                k[:, :, :self.length], v[:, :, :self.length] = self.keys, self.values
            self._k, self._v = k, v

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def crop(self, tokens_to_remove: int) -> None:
            self._unshare()
            if tokens_to_remove < 0 and self.get_seq_length() > 0:
                self.length = max(self.length + tokens_to_remove, 0)
                self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.get_seq_length() > 0:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]
                if self.prefix is not None:
                    self.rows, self.slots = self.rows[indices], None

        def share_rows(self, rows: torch.Tensor) -> None:
            """Like ``batch_select_indices(rows)`` (row b continues stored row ``rows[b]``: copies of
            one prompt), without copying the stored positions: they stay one shared prefix per stored
            row, which the lean decode step attends to once per distinct row. The positions added
            later are each row's own. Any other reader (``update`` from the model's forward, a
            crop, a repeat) copies the prefix out to every row first, as ``batch_select_indices``
            would have."""
            if self.get_seq_length() == 0 or self.prefix is not None:
                return self.batch_select_indices(rows)
            self.prefix, self.rows, self.slots = (self.keys, self.values), rows, None
            self._k = self._k.new_empty(len(rows), *self._k.shape[1:])
            self._v = self._v.new_empty(len(rows), *self._v.shape[1:])
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def _unshare(self) -> None:
            if self.prefix is not None:
                n = self.prefix[0].shape[-2]
                self._k[:, :, :n], self._v[:, :, :n] = self.prefix[0][self.rows], self.prefix[1][self.rows]
                self.prefix = self.rows = self.slots = None

        def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """Write one position of every row (the lean step's ``update``: a shared prefix stays shared)."""
            if self.length >= self._k.shape[-2]:  # full: the general path (copies the prefix out)
                self.update(key_states, value_states)
                return
            self._k.select(2, self.length).copy_(key_states.select(2, 0))
            self._v.select(2, self.length).copy_(value_states.select(2, 0))
            self.length += 1
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._unshare()
            if self.get_seq_length() > 0:
                self.batch_select_indices(torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats))
else:  # pragma: no cover
    PreallocatedLayer = None


# --------------------------------------------------------------------------- the lean decode step

_LEAN_FAMILIES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def lean_decode_step(model):
    """A decode step (one new token per row against the cache) that calls the model's own modules
    without the ``transformers`` forward around them, or None where this model is not one it can
    run exactly: a Llama or Qwen2 causal LM with full attention on SDPA, plain ``nn.Linear``
    projections (no LoRA layers) and a cache of :class:`PreallocatedLayer`.

    Why: a decode step of a small model is mostly Python. The ``transformers`` forward spends it on
    mask construction, output dataclasses, kwargs plumbing and hooks around the same few kernels;
    this step runs those kernels (embedding, RMSNorm, projections, rotary embedding, cache write,
    attention, MLP, final norm, LM head on the last position) in the same order with the same inputs.
    On an accelerator (or in bf16 / under CPU autocast) attention is ``sdpa_attention_forward`` with
    the mask ``transformers`` builds for SDPA at one query position, so the logits equal the
    forward's bit for bit. On the CPU in fp32 (where a decode step is per-op overhead and memory
    traffic, not FLOPs) the step differs in three ways: q/k/v and gate/up run as one matmul each
    (weights concatenated once per rollout, up to ``FUSE_BYTES``); attention is plain matmuls (the
    CPU SDPA kernel costs more at one query); and a prefix shared by copies of a prompt
    (``PreallocatedLayer.share_rows``) is attended once per prompt. Tokens equal the forward's and
    log-probs agree to 1e-5 (tests/unit/test_generation.py: rounding, not maths, differs).
    """
    config = model.config
    inner = getattr(model, "model", None)
    if (type(model).__name__ not in _LEAN_FAMILIES or PreallocatedLayer is None or inner is None
            or getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "use_sliding_window", False)
            or any(t != "full_attention" for t in (getattr(config, "layer_types", None) or []))):
        return None
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj")
    if any(type(layer.get_submodule(n)) is not torch.nn.Linear for layer in inner.layers for n in names):
        return None

    weight = inner.embed_tokens.weight
    cpu_step = _cpu_step(model, inner) if weight.device.type == "cpu" and weight.dtype == torch.float32 else None

    def step(ids_B1, mask_BL, positions_B1, cache):
        if not all(type(layer) is PreallocatedLayer for layer in getattr(cache, "layers", [None])):
            return None
        if cpu_step is None or torch.is_autocast_enabled("cpu"):
            return _sdpa_step(model, inner, ids_B1, mask_BL, positions_B1, cache)
        return cpu_step(ids_B1, mask_BL, positions_B1, cache)

    return step


def _sdpa_step(model, inner, ids_B1, mask_BL, positions_B1, cache) -> torch.Tensor:
    """The accelerator (and CPU autocast) step: the forward's modules and SDPA with its mask, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B = ids_B1.shape[0]
    h = inner.embed_tokens(ids_B1)
    cos, sin = inner.rotary_emb(h, positions_B1)
    attn_mask = mask_BL.bool()[:, None, None, :] if not bool(mask_BL.all()) else None
    for i, layer in enumerate(inner.layers):
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(B, 1, -1, a.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(B, 1, -1, a.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(B, 1, -1, a.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = cache.layers[i].update(k, v)
        o = sdpa_attention_forward(a, q, k, v, attn_mask, dropout=0.0, scaling=a.scaling)[0]
        h = h + a.o_proj(o.reshape(B, 1, -1).contiguous())
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(inner.norm(h))[:, -1]


# --------------------------------------------------------------------------- its CPU path

FUSE_BYTES = 256 * 2**20  # fused q/k/v and gate/up copies at most this large (else the separate projections)
_STATIC_ROPE = ("default", "linear", "llama3")  # rotary types whose cos/sin depend on the position only


def _cpu_step(model, inner):
    """The fp32 CPU decode step (see :func:`lean_decode_step`). Besides the fused projections it
    keeps, per rollout, what each step would recompute: the rotary cos/sin of every position
    (:class:`_RopeTable`), each layer's slots of a shared prefix (``PreallocatedLayer.slots``)."""
    fused = [_fused(layer) for layer in inner.layers] if _fused_bytes(inner) <= FUSE_BYTES else None
    rope = inner.rotary_emb
    table = _RopeTable(rope) if getattr(rope, "rope_type", "default") in _STATIC_ROPE else None
    linear = torch.nn.functional.linear

    def step(ids_B1, mask_BL, positions_B1, cache):
        h = inner.embed_tokens(ids_B1)
        if table is None:
            cos, sin = _signed(*rope(h, positions_B1[:, None]))
        else:
            cos, sin = table(h, positions_B1[:, None], cache.layers[0].length + 1)  # (B, 1, 1, D) each
        padded = not bool(mask_BL.all())
        mask = torch.zeros(mask_BL.shape, dtype=h.dtype).masked_fill_(mask_BL == 0, float("-inf")) if padded else None
        slots = _slots(cache.layers[0])
        for i, layer in enumerate(inner.layers):
            a, m = layer.self_attn, layer.mlp
            q, k, v = _qkv(layer, None if fused is None else fused[i], _norm(layer.input_layernorm, h), cos, sin)
            cache.layers[i].append(k, v)
            h = h + linear(_attend(q, cache.layers[i], mask, slots, a.scaling), a.o_proj.weight, a.o_proj.bias)
            x = _norm(layer.post_attention_layernorm, h)
            if fused is None:
                h = h + m(x)
            else:
                gate, up = linear(x, fused[i][2]).chunk(2, dim=-1)
                h = h + linear(m.act_fn(gate) * up, m.down_proj.weight, m.down_proj.bias)
        return model.lm_head(_norm(inner.norm, h))[:, -1]

    return step


class _RopeTable:
    """The rotary module's cos and (:func:`_signed`) sin at positions 0..n-1, computed once and grown
    on demand: a step indexes rows instead of running the module (a product of position and
    frequency, then cos/sin, elementwise: each row equals the module's output at that position, bit
    for bit)."""

    def __init__(self, rope):
        self.rope, self.cos, self.sin = rope, None, None

    def __call__(self, h, positions: torch.Tensor, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) at ``positions`` (any shape, every value below ``needed``), (..., D) each."""
        if self.cos is None or self.cos.shape[0] < needed:
            have = 0 if self.cos is None else self.cos.shape[0]
            cos, sin = _signed(*self.rope(h, torch.arange(max(needed, 2 * have), device=h.device)[None]))
            self.cos, self.sin = cos[0], sin[0]
        return self.cos[positions], self.sin[positions]


def _signed(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin with its first half negated): then x * cos + roll(x, D/2) * sin is the forward's
    x * cos + rotate_half(x) * sin, bit for bit (negation is exact)."""
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), -1)


def _norm(norm, h: torch.Tensor) -> torch.Tensor:
    """The (fp32) RMSNorm module's output as one fused op."""
    return torch.nn.functional.rms_norm(h, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _fused_bytes(inner) -> int:
    mods = [m for layer in inner.layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                                   layer.mlp.gate_proj, layer.mlp.up_proj)]
    return sum(m.weight.numel() * m.weight.element_size() for m in mods)


def _fused(layer) -> tuple:
    """(q/k/v weight, its bias or None, gate/up weight) concatenated: one matmul instead of three and
    two. Built per rollout (the weights change every optimiser step); each output column is the same
    dot product as the separate projection's (tests/unit/test_generation.py pins the tokens)."""
    a, m = layer.self_attn, layer.mlp
    with torch.no_grad():
        bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
        return (torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), bias,
                torch.cat([m.gate_proj.weight, m.up_proj.weight]))


def _qkv(layer, fused, x_B1H, cos_B11D, sin_B11D) -> tuple:
    """(queries (B, Hkv, G, D) grouped by their key/value head, keys and values (B, Hkv, 1, D)), the
    rotary embedding applied to queries and keys (``sin_B11D`` signed by :func:`_signed`)."""
    a, B = layer.self_attn, x_B1H.shape[0]
    nq, nkv = a.config.num_attention_heads, a.config.num_key_value_heads
    if fused is None:
        qkv = torch.cat([a.q_proj(x_B1H), a.k_proj(x_B1H), a.v_proj(x_B1H)], -1)
    else:
        qkv = torch.nn.functional.linear(x_B1H, fused[0], fused[1])
    qkv = qkv.view(B, -1, 1, a.head_dim)  # (B, nq + 2 nkv, 1, D)
    qk, v = qkv[:, :nq + nkv], qkv[:, nq + nkv:]
    qk = qk * cos_B11D + qk.roll(a.head_dim // 2, -1) * sin_B11D
    return qk[:, :nq].reshape(B, nkv, nq // nkv, a.head_dim), qk[:, nq:], v


def _slots(layer) -> tuple | None:
    """(shared row of each batch row, its rank among that row's copies, most copies S of one row,
    whether the batch is S copies of every shared row in order: row b = copy b % S of row b // S),
    or None when the layer shares no prefix. Computed once per ``rows`` (kept in ``layer.slots``)."""
    if layer.prefix is None:
        return None
    if layer.slots is None:
        rows, P = layer.rows, layer.prefix[0].shape[0]
        onehot = rows[:, None] == torch.arange(P, device=rows.device)
        rank = onehot.long().cumsum(0).gather(1, rows[:, None]).squeeze(1) - 1
        S = int(onehot.sum(0).max())
        in_order = len(rows) == P * S and torch.equal(rows, torch.arange(P, device=rows.device).repeat_interleave(S))
        layer.slots = (rows, rank, S, in_order)
    return layer.slots


def _attend(q, layer, mask, slots, scaling: float) -> torch.Tensor:
    """(B, 1, Hq * D) attention output of queries (B, Hkv, G, D) over the layer's cache with the
    additive (B, L) padding mask (or None), in plain matmuls (the CPU SDPA kernel costs more at one
    query). A shared prefix (``share_rows``) runs once per distinct row: the copies of one prompt
    are stacked as extra queries against their prompt's keys, so the prompt's keys and values are
    read once per prompt, not once per copy. When the batch holds the copies in order (RLOO/GRPO
    before any row finishes) that stacking is a reshape; otherwise a scatter into a zero grid."""
    B, nkv, G, D = q.shape
    n = 0 if slots is None else layer.prefix[0].shape[-2]
    own_k, own_v = layer.keys[:, :, n:], layer.values[:, :, n:]
    s = torch.matmul(q, own_k.transpose(-1, -2)) * scaling  # (B, Hkv, G, L - n)
    if slots is not None:
        rows, rank, S, in_order = slots
        pk, pv = layer.prefix
        P = pk.shape[0]
        grid = _to_grid(q, rows, rank, P, S, in_order)  # (P, S, Hkv, G, D)
        grid = torch.matmul(grid.transpose(1, 2).reshape(P, nkv, S * G, D), pk.transpose(-1, -2)) * scaling
        s = torch.cat([_from_grid(grid.view(P, nkv, S, G, n).transpose(1, 2), rows, rank, in_order), s], -1)
    if mask is not None:
        s = s + mask[:, None, None, :]
    w = s.softmax(-1)
    if slots is None:
        return torch.matmul(w, own_v).reshape(B, 1, -1)
    grid = _to_grid(w[..., :n], rows, rank, P, S, in_order)
    pre = torch.matmul(grid.transpose(1, 2).reshape(P, nkv, S * G, n), pv).view(P, nkv, S, G, D).transpose(1, 2)
    return (_from_grid(pre, rows, rank, in_order) + torch.matmul(w[..., n:], own_v)).reshape(B, 1, -1)


def _to_grid(x, rows, rank, P: int, S: int, in_order: bool) -> torch.Tensor:
    """(B, ...) per-row values as a (P, S, ...) grid: row b at [rows[b], rank[b]], zeros elsewhere."""
    if in_order:
        return x.reshape(P, S, *x.shape[1:])
    grid = x.new_zeros(P, S, *x.shape[1:])
    grid[rows, rank] = x
    return grid


def _from_grid(grid, rows, rank, in_order: bool) -> torch.Tensor:
    """The (B, ...) rows of a (P, S, ...) grid (the inverse of :func:`_to_grid`)."""
    return grid.reshape(-1, *grid.shape[2:]) if in_order else grid[rows, rank]
