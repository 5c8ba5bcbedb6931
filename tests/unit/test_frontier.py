"""Best-of-N frontier: hand-derived picks and the closed-form KL."""

import math

import pytest

from rlhfkit.evaluate.frontier import best_of_n_curve
from rlhfkit.kl import kl_bound


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


def test_fit_gao_recovers_the_coefficients_of_exact_curves():
    """Points on R = d(2 - 0.5 d) (best-of-N form) and R = d(1.5 - 0.3 log d) (RL form), d = sqrt(KL):
    least squares on (d, -d^2) / (d, -d log d) recovers alpha and beta exactly. KL = 0 is skipped."""
    import numpy as np

    from rlhfkit.evaluate.frontier import fit_gao, gao_curve

    kl = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    d = np.sqrt(kl)
    bon = fit_gao(kl, (d * (2 - 0.5 * d)).tolist(), "bon")
    assert bon["alpha"] == pytest.approx(2.0) and bon["beta"] == pytest.approx(0.5)
    logd = np.log(np.where(d > 0, d, 1))
    rl = fit_gao(kl, (d * (1.5 - 0.3 * logd)).tolist(), "rl")
    assert rl["alpha"] == pytest.approx(1.5) and rl["beta"] == pytest.approx(0.3)
    # at KL = 4 (d = 2): bon 2 * (2 - 1) = 2; rl 2 * (1.5 - 0.3 ln 2) = 2.584112
    assert gao_curve(bon, [0.0, 4.0]).tolist() == pytest.approx([0.0, 2.0])
    assert gao_curve(rl, [4.0]).tolist() == pytest.approx([2.584112], abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_gao([0.0, 1.0], [0.0, 1.0])
