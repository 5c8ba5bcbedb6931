"""Per-source loss weights (human vs AI-judge labels): parsing, matching rules, normalisation."""

import pytest
import torch

from rlhfkit import losses
from rlhfkit.data.sources import apply_source_weights, example_weights, parse_source_weights, source_weight
from rlhfkit.data.tokenize import TokenizedPair, collate_pairs


def test_parse_and_match():
    table = parse_source_weights(["human=1", "judge:=0.5", "judge:gpt=0.25", "default=2"])
    assert table == {"human": 1.0, "judge:": 0.5, "judge:gpt": 0.25, "default": 2.0}
    assert source_weight("human", table) == 1.0
    assert source_weight("judge:gpt", table) == 0.25          # exact
    assert source_weight("judge:gpt-4o", table) == 0.25       # longest prefix
    assert source_weight("judge:local", table) == 0.5
    assert source_weight(None, table) == 2.0 and source_weight("other", table) == 2.0  # default
    assert source_weight("other", {"human": 3.0}) == 1.0
    assert parse_source_weights({"human": 1, "judge": 0.5}) == {"human": 1.0, "judge": 0.5}
    for bad, match in ((["human"], "expected 'source=weight'"), (["human=x"], "not a number"),
                       (["human=-1"], ">= 0")):
        with pytest.raises(ValueError, match=match):
            parse_source_weights(bad)


def test_weights_have_mean_one():
    """Raw weights human 1, judge 0.5, judge 0.5, human 1 -> sum 3, n 4 -> scaled by 4/3:
    [4/3, 2/3, 2/3, 4/3]; mean 1."""
    got = example_weights(["human", "judge:x", "judge:y", "human"], {"human": 1.0, "judge": 0.5})
    assert got == pytest.approx([4 / 3, 2 / 3, 2 / 3, 4 / 3])
    assert example_weights(["judge:a"] * 3, {"judge": 0.5}) == pytest.approx([1.0] * 3)  # one source: unweighted
    with pytest.raises(ValueError, match="weight 0"):
        example_weights(["human"], {"human": 0.0})


def test_apply_to_pairs_and_collate():
    pairs = [TokenizedPair([1], [2], [3], extra={"source": "human"}), TokenizedPair([1], [2], [4], extra={})]
    report = apply_source_weights(pairs, ["human=3", "default=1"])
    assert [p.weight for p in pairs] == pytest.approx([1.5, 0.5])
    assert report == {"human": {"pairs": 1, "weight": 3.0}, "(none)": {"pairs": 1, "weight": 1.0}}
    assert collate_pairs(pairs, 0)["weight"].tolist() == pytest.approx([1.5, 0.5])
    assert apply_source_weights(pairs, []) == {}


def test_weighted_bradley_terry_by_hand():
    """diffs 0 and ln 3: losses -log s(0) = ln 2 = 0.693147, -log s(ln 3) = -ln 0.75 = 0.287682.
    Weights (3, 1): (3 * 0.693147 + 0.287682) / 4 = 0.591781. Weights (1, 1) = the plain mean 0.490415."""
    import math

    chosen, rejected = torch.tensor([0.0, math.log(3.0)]), torch.zeros(2)
    got = losses.bradley_terry(chosen, rejected, weights_B=torch.tensor([3.0, 1.0]))
    assert got.item() == pytest.approx(0.591781, abs=1e-6)
    assert losses.bradley_terry(chosen, rejected, weights_B=torch.ones(2)).item() == pytest.approx(0.490415, abs=1e-6)
    assert losses.weighted_mean(torch.tensor([1.0, 4.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(3.25)
