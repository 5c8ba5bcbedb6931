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
