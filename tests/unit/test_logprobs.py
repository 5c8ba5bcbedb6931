"""The trainers' log-prob functions against numbers worked out by hand (tolerance 1e-6).

A stub model over a 2-token vocabulary whose logits at a position depend only on the token there:
after token 0 the logits are [0, ln 3] (p(0) = 1/4, p(1) = 3/4), after token 1 they are [0, 0]
(p = 1/2 each). Three sequences, response tokens marked by the loss mask:

- A = [0, 1, 0, 1], mask [0, 0, 1, 1]: p(0 | 1) p(1 | 0) = 1/2 * 3/4 -> ln 3/8 = -0.9808293
- B = [0, 0], mask [0, 1]: p(0 | 0) = 1/4 -> ln 1/4 = -1.3862944
- C = [1, 1], mask [0, 1]: p(1 | 1) = 1/2 -> ln 1/2 = -0.6931472

A shift by one position or a mask read in the wrong place gives other values. Packed, B and C
share a row (``data.tokenize.layout`` bins them together), so the selection by loss mask and
sequence id is exercised too.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.data.tokenize import layout
from rlhfkit.logprobs import batch_logprobs, response_logps
from rlhfkit.train.sft import nll_sum

ROWS = [[0, 1, 0, 1], [0, 0], [1, 1]]
MASKS = [[0, 0, 1, 1], [0, 1], [0, 1]]
WANT = [math.log(3 / 8), math.log(1 / 4), math.log(1 / 2)]


class Stub(torch.nn.Module):
    """Logits of a position from its own token alone: a table lookup, no positions, no mask."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.mark.parametrize("pack", [False, True])
def test_response_logps_by_hand(pack):
    batch = layout(ROWS, MASKS, 0, pack=pack)
    assert batch["input_ids"].shape[0] == (2 if pack else 3)
    got = response_logps(Stub(), batch)
    torch.testing.assert_close(got, torch.tensor(WANT), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pack", [False, True])
def test_nll_sum_by_hand(pack):
    """Summed NLL 0.9808293 + 1.3862944 + 0.6931472 = 3.0602709 over 4 response tokens."""
    total, count = nll_sum(Stub(), layout(ROWS, MASKS, 0, pack=pack))
    assert total.item() == pytest.approx(3.0602709, abs=1e-6)
    assert count == 4


def test_batch_logprobs_are_the_response_tokens_in_order():
    """Per token: A's ln 1/2, ln 3/4, then B's ln 1/4, then C's ln 1/2 (row-major order, padded)."""
    got = batch_logprobs(Stub(), layout(ROWS, MASKS, 0))
    want = torch.tensor([math.log(1 / 2), math.log(3 / 4), math.log(1 / 4), math.log(1 / 2)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
