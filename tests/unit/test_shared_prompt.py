"""Shared-prompt log-probs (each distinct prompt computed once for its several responses) against
the plain path (every row computed whole): values and gradients, on a rotary-position Llama and an
absolute-position GPT-2 (where a wrong response position shows as wrong log-probs)."""

import inspect

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhfkit.logprobs import plan, policy_logprobs, prompt_sharing_works, response_logprobs, shared_prompt_logprobs
from rlhfkit.sampling import Rollout, rollout_rows
from rlhfkit.tiny_models import build_word_tokenizer, tiny_causal_lm

TOK = build_word_tokenizer(["a b c d e f g h i j k l m n o p"])
# Three prompts; the first two sampled three times each, the third once (RLOO/GRPO-style groups).
PROMPTS = [[2, 7, 8, 9, 10, 11, 12], [2, 10, 13], [2, 11, 12, 13, 14, 15, 16, 9]]
OWNERS = [0, 0, 0, 1, 1, 1, 2]
RESPONSES = [[16, 17, 3], [18, 19, 20, 21], [7, 3], [8, 8, 8, 3], [9], [12, 13, 14, 15], [17, 3]]


def _gpt2():
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(TOK), bos_token_id=TOK.bos_token_id,
                        eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # train mode, same values both paths
    torch.manual_seed(3)
    return GPT2LMHeadModel(config)


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    m = tiny_causal_lm(TOK, seed=7) if request.param == "llama" else _gpt2()
    with torch.no_grad():  # spread the logits so log-probs differ clearly between tokens
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return m.train()


def _rows():
    prompts = [PROMPTS[o] for o in OWNERS]
    width = max(map(len, RESPONSES))
    resp = torch.tensor([r + [0] * (width - len(r)) for r in RESPONSES])
    rmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in RESPONSES])
    rollout = Rollout(prompts, resp, torch.zeros(resp.shape), rmask, torch.ones(len(prompts), dtype=torch.bool),
                      [""] * len(prompts))
    return rollout_rows(prompts, rollout, TOK.pad_token_id)[:3]


def test_plan_finds_the_groups():
    ids, attn, mask = _rows()
    split = plan(ids, attn, mask, worth_it=float("inf"))
    assert split.prompts == PROMPTS and split.owner == OWNERS and split.responses == RESPONSES
    assert split.starts == [len(PROMPTS[o]) for o in OWNERS]
    # shared: 3 prompts x 8 (left-padded) + 7 responses x 4 (right-padded) = 52 tokens;
    # plain: the row lengths, prompts 3 x 7 + 3 x 3 + 8 = 38 plus responses 20 = 58
    assert plan(ids, attn, mask, worth_it=52.5 / 58) is not None and plan(ids, attn, mask, worth_it=51.5 / 58) is None


def test_plan_refuses_rows_that_are_not_prompt_then_response():
    ids, attn, mask = _rows()
    gap = mask.clone()
    gap[0, len(PROMPTS[0])] = 0  # a hole in row 0's response
    assert plan(ids, attn, gap, worth_it=float("inf")) is None


def test_shared_equals_plain_values_and_gradients(model):
    ids, attn, mask = _rows()
    want, _ = policy_logprobs(model, ids, attn, temperature=0.7)  # full logits, every row whole
    want = want * mask
    want.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got, logits = shared_prompt_logprobs(model, plan(ids, attn, mask, worth_it=float("inf")), tuple(mask.shape), 0.7)
    assert logits.shape == (int(mask.sum()), len(TOK))
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-5)
    assert bool((got[mask == 0] == 0).all()) and float(want.detach().abs().sum()) > 1.0
    got.sum().backward()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_response_logprobs_shares_only_when_it_saves_work(model, monkeypatch):
    import rlhfkit.logprobs as sp

    ids, attn, mask = _rows()
    take = [0, 1, 2, 0, 3, 4, 5, 3]  # 4 rows each of prompts 0 and 1: shared 2 x 7 + 8 x 4 = 46 of 65 tokens
    assert plan(ids[take], attn[take], mask[take]) is not None
    calls = []
    real = sp.shared_prompt_logprobs
    monkeypatch.setattr(sp, "shared_prompt_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = response_logprobs(model, ids[take], attn[take], mask[take], 0.7, pack=True)[0]
    shared = response_logprobs(model, ids[take], attn[take], mask[take], 0.7, pack=True, share_prompts=True)[0]
    assert calls == [1]
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    distinct = [0, 3, 6]  # one row per prompt: nothing to share, the plain path runs
    response_logprobs(model, ids[distinct], attn[distinct], mask[distinct], 0.7, share_prompts=True)
    assert calls == [1]


def test_prompt_sharing_works_on_real_models_and_not_on_a_broken_one(model):
    assert prompt_sharing_works(model)

    class Shifted(torch.nn.Module):  # positions of the second forward off by one: must be caught
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, position_ids=None, cache=None, past_key_values=None, **kw):
            cache = cache if cache is not None else past_key_values
            if cache is not None and cache.get_seq_length() > 0:
                position_ids = position_ids + 1
            cache_kw = "cache" if "cache" in inspect.signature(self.inner.forward).parameters else "past_key_values"
            return self.inner(position_ids=position_ids, **{cache_kw: cache}, **kw)

    prefix = model.base_model_prefix
    setattr(model, prefix, Shifted(getattr(model, prefix)))
    assert not prompt_sharing_works(model)
