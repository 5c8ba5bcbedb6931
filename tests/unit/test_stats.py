import pytest

from rlhfkit.evaluate.stats import wilson_interval


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
    from rlhfkit.evaluate.stats import win_rate

    got = win_rate([3, 1, 0, 2], [1, 1, 5, 0])
    assert got["winrate"] == 0.625 and got["n"] == 4
    low, high = got["winrate_ci"]
    assert 0.0 <= low <= 0.625 <= high <= 1.0
    with pytest.raises(ValueError, match="equal"):
        win_rate([1], [1, 2])


def test_bootstrap_ci_shrinks_with_n_and_covers_the_mean():
    """For 0/1 outcomes with p = 0.7 the 95% interval is about +-1.96 sqrt(0.21 / n):
    +-0.0898 at n = 100, +-0.0284 at n = 1000 (normal approximation)."""
    from rlhfkit.evaluate.stats import bootstrap_ci

    small = bootstrap_ci([1] * 70 + [0] * 30)
    large = bootstrap_ci([1] * 700 + [0] * 300)
    assert small[0] < 0.7 < small[1] and large[0] < 0.7 < large[1]
    assert abs((small[1] - small[0]) / 2 - 0.0898) < 0.012
    assert abs((large[1] - large[0]) / 2 - 0.0284) < 0.004
    assert bootstrap_ci([1] * 50) == (1.0, 1.0)
