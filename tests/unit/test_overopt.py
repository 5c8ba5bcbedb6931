"""Over-optimisation monitor: the z statistic by hand, and when the monitor fires."""

import math
import random

import pytest

from rlhfkit.stats import DivergenceMonitor, change_z


def test_change_z_hand_value():
    """[1, 2 | 3, 4], window 2: means 1.5 and 3.5, variances 0.5 and 0.5,
    s.e. = sqrt(0.5/2 + 0.5/2) = 0.70711 -> z = 2 / 0.70711 = 2.828427."""
    assert change_z([1, 2, 3, 4], 2) == pytest.approx(2.828427, abs=1e-6)
    assert change_z([9, 1, 2, 3, 4], 2) == pytest.approx(2.828427, abs=1e-6)   # only the last 2 windows count
    assert change_z([1, 1, 2, 2], 2) == math.inf and change_z([1, 1, 1, 1], 2) == 0.0
    with pytest.raises(ValueError):
        change_z([1, 2, 3], 2)


def test_monitor_fires_only_when_training_rises_and_heldout_falls():
    rng = random.Random(0)
    noise = lambda: rng.gauss(0, 0.05)  # noqa: E731

    def run(train_slope, heldout_slope, steps=40):
        m = DivergenceMonitor(window=5, z=2.0)
        flags = [m.update(train_slope * t + noise(), heldout_slope * t + noise())["overopt_warning"] for t in range(steps)]
        return flags, m

    flags, m = run(0.1, -0.1)
    assert flags[:9] == [0] * 9 and all(flags[12:]) and m.warned_at[0] <= 12
    assert not any(run(0.1, 0.1)[0])      # both rise: healthy
    assert not any(run(0.0, -0.1)[0])     # held-out falls but training does not rise
    assert not any(run(0.0, 0.0)[0])      # noise only
    with pytest.raises(ValueError):
        DivergenceMonitor(window=1)


def test_monitor_state_round_trip_continues_the_same_test():
    """A monitor rebuilt from a checkpoint's state gives the same answers as the one that ran on."""
    a = DivergenceMonitor(window=3)
    train, held = [5, 0, 0, 0, 1, 2, 3, 4, 5, 6], [5, 0, 0, 0, -1, -2, -3, -4, -5, -6]
    for t, h in zip(train[:7], held[:7]):
        a.update(t, h)
    b = DivergenceMonitor(window=3, state=a.state())
    assert len(b.train) == 6 and b.steps == 7 and b.warned_at == a.warned_at == [7]
    for t, h in zip(train[7:], held[7:]):
        assert a.update(t, h) == b.update(t, h)
    assert b.warned_at == a.warned_at and b.state() == a.state()
