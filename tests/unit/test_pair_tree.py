"""Pairs with each prompt computed once (``data.pair_tree``): the layout by hand, and rewards and
gradients equal to the padded prompt + response rows."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rlhfkit.data.pair_tree import tree_pairs
from rlhfkit.data.tokenize import TokenizedPair, collate_pairs
from rlhfkit.logprobs import tree_pairs_work
from rlhfkit.models import packed_rewards, reward_forward
from rlhfkit.train.rm import pair_rewards


def _rm(attn="sdpa", seed=4):
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_labels=1, pad_token_id=0, attn_implementation=attn))


def _pairs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda lo, hi: torch.randint(5, 40, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()  # noqa: E731
    return [TokenizedPair(ids(1, 9), ids(1, 12), ids(1, 12), margin=0.5 * i) for i in range(n)]


def test_layout_by_hand():
    # pair 0: prompt [11, 12], chosen [21], rejected [31, 32] -> segment of 5 tokens;
    # pair 1: prompt [13], chosen [22, 23], rejected [33] -> 4 tokens. Width 5: two rows,
    # row 0 = pair 0 (positions 0 1 | 2 | 2 3), row 1 = pair 1 (0 | 1 2 | 1) + one pad.
    pairs = [TokenizedPair([11, 12], [21], [31, 32]), TokenizedPair([13], [22, 23], [33])]
    b = tree_pairs(pairs, pad_id=0)
    assert b["input_ids"].tolist() == [[11, 12, 21, 31, 32], [13, 22, 23, 33, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 1, 0]]
    # chosen last: flat 2 and 5 + 2 = 7; rejected last: 4 and 5 + 3 = 8
    assert b["last_index"].tolist() == [2, 7, 4, 8]
    m = b["tree_mask"][0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0],   # prompt
                 [1, 1, 0, 0, 0],
                 [1, 1, 1, 0, 0],   # chosen: prompt + itself
                 [1, 1, 0, 1, 0],   # rejected: prompt + itself, never the chosen token
                 [1, 1, 0, 1, 1]]
    assert b["tree_mask"][1, 0].int().tolist()[3] == [1, 0, 0, 1, 0]  # pair 1's rejected: prompt + itself
    assert b["tree_mask"][1, 0].int().tolist()[4] == [0, 0, 0, 0, 1]  # the pad: itself only
    assert int(b["num_tokens"]) == 9 and b["margin"].tolist() == [0.0, 0.0]


def test_tree_rewards_and_gradients_equal_padded():
    pairs = _pairs(6, seed=3)
    padded, tree = collate_pairs(pairs, 0), tree_pairs(pairs, 0)
    assert int(tree["num_tokens"]) < int(padded["num_tokens"])  # each prompt once
    grads = []
    for batch in (padded, tree):
        model = _rm()
        chosen, rejected = pair_rewards(model, batch)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        loss.backward()
        grads.append((torch.cat([chosen, rejected]).detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-5)
    for g_tree, g_pad in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_tree, g_pad, rtol=1e-4, atol=1e-6)


def test_probe_accepts_sdpa_and_rejects_a_model_that_ignores_the_mask():
    model = _rm()
    assert tree_pairs_work(model)

    class NoMask(torch.nn.Module):
        """Attends over the packed row by position resets only: rejected tokens would see chosen ones."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.score, self.base_model_prefix = inner, inner.config, inner.score, "model"
            self.model = lambda attention_mask=None, **kw: inner.model(**kw)

        def forward(self, input_ids, attention_mask=None, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    assert not tree_pairs_work(NoMask(model))
    pairs = _pairs(3, seed=1)
    tree, padded = tree_pairs(pairs, 0), collate_pairs(pairs, 0)
    with torch.no_grad():  # the probe's reason: without the mask the rewards differ
        bad = NoMask(model).model(input_ids=tree["input_ids"], position_ids=tree["position_ids"]).last_hidden_state
        want = reward_forward(model, padded["input_ids"], padded["attention_mask"])
        got = packed_rewards(model, tree["input_ids"], tree["position_ids"], tree["last_index"], tree["tree_mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(model.score(bad.flatten(0, 1)[tree["last_index"]]).squeeze(-1), want, atol=1e-3)


def test_layout_targets_by_hand():
    # the same two pairs: targets 21 (from flat 1), 31 (from the prompt's last, 1), 32 (from 3);
    # 22 (from 5), 23 (from 6), 33 (from the prompt's last, 5)
    pairs = [TokenizedPair([11, 12], [21], [31, 32], ref_chosen=-1.0, ref_rejected=-2.0),
             TokenizedPair([13], [22, 23], [33], ref_chosen=-3.0, ref_rejected=-4.0)]
    b = tree_pairs(pairs, pad_id=0)
    assert b["input_ids"][:, 1:][b["loss_mask"][:, 1:].bool()].tolist() == [21, 31, 32, 22, 23, 33]
    assert b["tree_src"].tolist() == [1, 1, 3, 5, 6, 5]
    assert b["seq_id"][:, 1:][b["loss_mask"][:, 1:].bool()].tolist() == [0, 2, 2, 1, 1, 3]
    assert b["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]


def test_tree_response_logps_and_gradients_equal_padded():
    from rlhfkit.logprobs import response_logps
    from rlhfkit.tiny_models import build_word_tokenizer, tiny_causal_lm

    tok = build_word_tokenizer([" ".join(f"w{i}" for i in range(40))])
    pairs = _pairs(6, seed=5)
    pairs[0].prompt_ids = []  # no prompt: the first response token has no prediction in either layout
    padded, tree = collate_pairs(pairs, 0), tree_pairs(pairs, 0)
    out = []
    for batch in (padded, tree):
        model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, seed=6)
        logps = response_logps(model, batch)
        logps.sum().backward()
        out.append((logps.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=0, atol=1e-4)
    for g_tree, g_pad in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(g_tree, g_pad, rtol=1e-4, atol=1e-5)
    assert tree_pairs_work(tiny_causal_lm(tok, hidden_size=32, num_layers=2), reward=False)

    class Wrapper(torch.nn.Module):  # as DDP: no split head, so the full-logits path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    with torch.no_grad():
        wrapped = response_logps(Wrapper(tiny_causal_lm(tok, hidden_size=32, num_layers=2, seed=6)), tree)
    torch.testing.assert_close(wrapped, out[0][0], rtol=0, atol=1e-4)
