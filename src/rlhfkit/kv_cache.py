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

        def update(self, key_states, value_states, *args, **kwargs):
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
            if tokens_to_remove < 0 and self.get_seq_length() > 0:
                self.length = max(self.length + tokens_to_remove, 0)
                self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.get_seq_length() > 0:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_repeat_interleave(self, repeats: int) -> None:
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
    ``sdpa_attention_forward``, MLP, final norm, LM head on the last position) in the same order
    with the same inputs, so its logits equal the forward's bit for bit (tests/unit/test_generation.py
    checks it, sampling with the step on and off). The mask is what ``transformers`` builds for SDPA
    at one query position: none when no row is padded, else the (B, 1, 1, L) padding mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

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

    def step(ids_B1, mask_BL, positions_B1, cache):
        if not all(type(layer) is PreallocatedLayer for layer in getattr(cache, "layers", [None])):
            return None
        B = ids_B1.shape[0]
        h = inner.embed_tokens(ids_B1)
        cos, sin = inner.rotary_emb(h, positions_B1)
        attn_mask = None if bool(mask_BL.all()) else mask_BL.bool()[:, None, None, :]
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

    return step
