"""Best-of-N frontier: hand-derived picks and the closed-form KL."""

import math

import pytest

from rlhfkit.evaluate.frontier import best_of_n_curve, kl_bound


def test_kl_bound_hand_derived():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bound(4) == pytest.approx(1.3862944 - 0.75)
    with pytest.raises(ValueError):
        kl_bound(0)


def test_best_of_n_curve_hand_derived():
    proxy = [[1, 3, 2, 5], [0, 0, 4, 1]]
    gold = [[10, 20, 30, 40], [1, 2, 3, 4]]
    rows = best_of_n_curve(proxy, gold, [4, 1, 2])
    assert [r["n"] for r in rows] == [1, 2, 4]
    # N=1: the first samples. N=2: prompt 0 picks proxy 3 (gold 20); prompt 1 ties 0/0 -> the first (gold 1).
    # N=4: proxy 5 (gold 40) and proxy 4 (gold 3).
    assert [r["proxy_reward"] for r in rows] == [0.5, 1.5, 4.5]
    assert [r["gold_reward"] for r in rows] == [5.5, 10.5, 21.5]
    assert rows[1]["kl"] == pytest.approx(kl_bound(2))


def test_best_of_n_curve_needs_enough_samples():
    with pytest.raises(ValueError, match="needs 4 scored samples"):
        best_of_n_curve([[1, 2]], [[1, 2]], [4])
