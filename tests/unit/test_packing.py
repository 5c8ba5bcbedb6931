"""Invariance tests for the fast paths: packed == padded, LM head on selected positions == full
logits, logsumexp log-probs == log_softmax + gather."""

from __future__ import annotations

import torch

from rlhfkit.data.tokenize import Tokenized, TokenizedPair, collate_pairs, collate_sft
from rlhfkit.logprobs import causal_lm_logits, packing_works, response_logps, target_logprobs
from rlhfkit.losses import token_logprobs
from rlhfkit.models import packed_rewards, reward_forward
from rlhfkit.tiny_models import build_word_tokenizer, tiny_causal_lm
from rlhfkit.train.sft import nll_sum

WORDS = "a b c d e f g h i j k l m n o p q r s t u v w x y z".split()


def _tok():
    return build_word_tokenizer([" ".join(WORDS)])


def _rows(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 14, (n,), generator=g).tolist()
    return [[2] + torch.randint(7, 7 + len(WORDS), (k,), generator=g).tolist() for k in lengths]


def _pairs(tok, n: int = 5, seed: int = 0) -> list[TokenizedPair]:
    rows = _rows(3 * n, seed)
    return [TokenizedPair(rows[3 * i], rows[3 * i + 1][1:] + [3], rows[3 * i + 2][1:] + [3]) for i in range(n)]


def test_token_logprobs_equals_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    targets = torch.randint(0, 11, (3, 5), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, targets), want, rtol=0, atol=1e-6)


def test_target_logprobs_packed_equals_full_logits_padded():
    """The fast path (packed, LM head at selected positions) against the reference path (padded,
    full (B, T, V) logits, log_softmax + gather), values and gradients."""
    tok = _tok()
    model = tiny_causal_lm(tok, seed=1)
    batch = [Tokenized(r, [0] * 3 + [1] * (len(r) - 3)) for r in _rows(7, 1)]
    padded, packed = collate_sft(batch, tok.pad_token_id), collate_sft(batch, tok.pad_token_id, pack=True)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # packing removed padding
    logits = causal_lm_logits(model, padded["input_ids"], padded["attention_mask"])[:, :-1]
    sel = padded["loss_mask"][:, 1:].bool()
    want = torch.log_softmax(logits, -1).gather(-1, padded["input_ids"][:, 1:, None]).squeeze(-1)[sel]
    want.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fast = target_logprobs(model, packed["input_ids"], packed["loss_mask"], position_ids_BT=packed["position_ids"])
    fast.sum().backward()
    # packing reorders sequences: compare per-sequence sums
    seq_pad = padded["seq_id"][:, 1:][sel]
    seq_pack = packed["seq_id"][:, 1:][packed["loss_mask"][:, 1:].bool()]
    per_seq = lambda v, s: torch.zeros(len(batch)).index_add(0, s, v.detach())  # noqa: E731
    torch.testing.assert_close(per_seq(fast, seq_pack), per_seq(want, seq_pad), rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_sft_nll_packed_equals_padded():
    tok = _tok()
    model = tiny_causal_lm(tok, seed=2)
    batch = [Tokenized(r, [1] * len(r)) for r in _rows(6, 2)]
    a, n_a = nll_sum(model, collate_sft(batch, tok.pad_token_id))
    b, n_b = nll_sum(model, collate_sft(batch, tok.pad_token_id, pack=True))
    assert n_a == n_b == sum(len(x.input_ids) - 1 for x in batch)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


def test_dpo_response_logps_packed_equals_padded_and_reference():
    """Per-sequence summed response log-probs, chosen then rejected, in all three forms."""
    tok = _tok()
    model = tiny_causal_lm(tok, seed=3)
    pairs = _pairs(tok)
    padded, packed = collate_pairs(pairs, tok.pad_token_id), collate_pairs(pairs, tok.pad_token_id, pack=True)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    with torch.no_grad():
        logits = causal_lm_logits(model, padded["input_ids"], padded["attention_mask"])[:, :-1]
        ref = (torch.log_softmax(logits, -1).gather(-1, padded["input_ids"][:, 1:, None]).squeeze(-1)
               * padded["loss_mask"][:, 1:]).sum(1)
        torch.testing.assert_close(response_logps(model, padded), ref, rtol=0, atol=1e-4)
        torch.testing.assert_close(response_logps(model, packed), ref, rtol=0, atol=1e-4)


def test_packed_rewards_equal_padded_rewards():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _tok()
    torch.manual_seed(4)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_labels=1, pad_token_id=tok.pad_token_id)).eval()
    pairs = _pairs(tok, seed=4)
    padded, packed = collate_pairs(pairs, tok.pad_token_id), collate_pairs(pairs, tok.pad_token_id, pack=True)
    with torch.no_grad():
        want = reward_forward(model, padded["input_ids"], padded["attention_mask"])
        got = packed_rewards(model, packed["input_ids"], packed["position_ids"], packed["last_index"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert packing_works(model, reward=True)


def test_packing_probe_accepts_llama_and_rejects_a_model_that_mixes_sequences():
    tok = _tok()
    model = tiny_causal_lm(tok, seed=5)
    assert packing_works(model)

    class IgnoresPositions(torch.nn.Module):
        """Plain causal attention over the whole row: packed sequences would see each other."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=False)

    assert not packing_works(IgnoresPositions(model))
