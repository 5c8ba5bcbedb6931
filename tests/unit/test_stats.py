import pytest

from rlhfkit.stats import wilson_interval


def test_wilson_interval_hand_values():
    """9 of 10, z = 1.959964: denom = 1 + z^2/10 = 1.3841459; centre = (0.9 + 0.1920729) / denom
    = 0.7889869; half = z * sqrt(0.009 + 0.0096037) / denom = 0.1931369 -> [0.5958500, 0.9821238]."""
    low, high = wilson_interval(9, 10)
    assert low == pytest.approx(0.5958500, abs=1e-6)
    assert high == pytest.approx(0.9821238, abs=1e-6)


def test_wilson_interval_edges():
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7224672, abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_as_half():
    """scores vs baseline: win, tie, loss, win -> (1 + 0.5 + 0 + 1) / 4 = 0.625."""
    from rlhfkit.stats import win_rate

    got = win_rate([3, 1, 0, 2], [1, 1, 5, 0])
    assert got["winrate"] == 0.625 and got["n"] == 4
    low, high = got["winrate_ci"]
    assert 0.0 <= low <= 0.625 <= high <= 1.0
    with pytest.raises(ValueError, match="equal"):
        win_rate([1], [1, 2])


def test_bootstrap_ci_shrinks_with_n_and_covers_the_mean():
    """For 0/1 outcomes with p = 0.7 the 95% interval is about +-1.96 sqrt(0.21 / n):
    +-0.0898 at n = 100, +-0.0284 at n = 1000 (normal approximation)."""
    from rlhfkit.stats import bootstrap_ci

    small = bootstrap_ci([1] * 70 + [0] * 30)
    large = bootstrap_ci([1] * 700 + [0] * 300)
    assert small[0] < 0.7 < small[1] and large[0] < 0.7 < large[1]
    assert abs((small[1] - small[0]) / 2 - 0.0898) < 0.012
    assert abs((large[1] - large[0]) / 2 - 0.0284) < 0.004
    assert bootstrap_ci([1] * 50) == (1.0, 1.0)


def test_bootstrap_win_rate_interval_covers_the_true_rate_at_the_stated_rate():
    """200 simulated experiments, true win rate 0.6, n = 200 paired comparisons each: the 95%
    percentile-bootstrap interval of ``win_rate`` should hold 0.6 in about 95% of them. With 200
    experiments the observed share has s.e. sqrt(.95 * .05 / 200) = 0.015, so [0.90, 0.99] is the
    nominal rate +-3 s.e.; an interval a third too narrow (coverage ~0.83) would fail."""
    import numpy as np

    from rlhfkit.stats import win_rate

    rng = np.random.default_rng(123)
    hits = 0
    for e in range(200):
        wins = (rng.random(200) < 0.6).astype(float)   # policy scores 1 (win) or 0 (loss) against 0.5
        low, high = win_rate(wins.tolist(), [0.5] * 200, n_boot=1000, seed=e)["winrate_ci"]
        hits += low <= 0.6 <= high
    assert 0.90 <= hits / 200 <= 0.99, hits / 200


def test_length_controlled_win_rate_removes_a_pure_length_advantage():
    """16 items where the policy is longer (d = +1), 12 won; 4 where it is shorter (d = -1), 1 won:
    raw win rate 13/20 = 0.65. sd(d) = sqrt(1 - 0.6^2) = 0.8, so x = +-tanh(1.25), symmetric, and the
    two-point logistic fit is exact: a + b x = logit(0.75), a - b x = logit(0.25) -> a = 0, so the
    length-controlled rate sigmoid(a) = 0.5 (up to the tiny ridge on b)."""
    from rlhfkit.stats import length_controlled_win_rate, logistic_fit

    outcomes = [1] * 12 + [0] * 4 + [1] + [0] * 3
    lengths = [11] * 16 + [9] * 4
    got = length_controlled_win_rate(outcomes, lengths, [10] * 20, n_boot=200)
    assert got["lc_winrate"] == pytest.approx(0.5, abs=5e-3)   # the ridge (1e-3) moves it by 0.002
    import math
    x = [math.tanh(1.25)] * 16 + [-math.tanh(1.25)] * 4
    a, b = logistic_fit(x, outcomes, ridge=0.0)
    assert a == pytest.approx(0.0, abs=1e-9) and b * math.tanh(1.25) == pytest.approx(math.log(3), abs=1e-9)
    assert got["length_coef"] > 1.0
    assert got["lc_winrate_ci"][0] < 0.5 < got["lc_winrate_ci"][1]
    # equal lengths: x = 0 everywhere, the fit is the plain log-odds: 3 wins of 4 -> 0.75
    assert length_controlled_win_rate([1, 1, 1, 0], [5] * 4, [5] * 4, n_boot=50)["lc_winrate"] == pytest.approx(0.75, abs=1e-6)
    # fractional targets are fine (ties count 0.5): the exact two-point fit
    a, b = logistic_fit([-1.0, 1.0], [0.25, 0.75], ridge=0.0)
    assert a == pytest.approx(0.0, abs=1e-9) and b == pytest.approx(1.0986123, abs=1e-6)   # logit(0.75) = ln 3


def test_calibration_hand_values():
    """probs 0.1, 0.15 (bin 1: conf 0.125, freq 0.5), 0.8 (bin 8: 0.8, 1), 0.9 (bin 9: 0.9, 1):
    ECE = 2/4 * 0.375 + 1/4 * 0.2 + 1/4 * 0.1 = 0.2625."""
    from rlhfkit.stats import calibration

    got = calibration([0.1, 0.15, 0.8, 0.9], [0, 1, 1, 1], bins=10)
    assert [(b["count"], b["confidence"], b["accuracy"]) for b in got["bins"]] == [
        (2, pytest.approx(0.125), 0.5), (1, 0.8, 1.0), (1, 0.9, 1.0)]
    assert got["ece"] == pytest.approx(0.2625)
    assert calibration([1.0], [1])["bins"][0]["bin_low"] == 0.9   # p = 1 falls in the last bin


def test_slope_ci_exact_line_and_noise():
    """y = 2x + 1 exactly: slope 2 in every resample, correlation 1."""
    from rlhfkit.stats import slope_ci

    got = slope_ci([1, 2, 3, 4, 5], [3, 5, 7, 9, 11], n_boot=200)
    assert got["slope"] == pytest.approx(2.0) and got["corr"] == pytest.approx(1.0)
    assert got["slope_ci"] == [pytest.approx(2.0), pytest.approx(2.0)]
    with pytest.raises(ValueError):
        slope_ci([1, 2], [1, 2])
