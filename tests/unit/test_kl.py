"""KL controllers against coefficients worked out by hand (tolerance 1e-6)."""

import json

import pytest

from rlhfkit.kl import AdaptiveKLController, FixedKLController, make_kl_controller

ABS = 1e-6


@pytest.mark.parametrize("kl,expected", [
    # 9 / 6 - 1 = 0.5, clipped to 0.2: 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512
    (9.0, 0.100512),
    # 3 / 6 - 1 = -0.5, clipped to -0.2: 0.1 * (1 - 0.00512) = 0.099488
    (3.0, 0.099488),
    # 6.6 / 6 - 1 = 0.1, inside the clip: 0.1 * (1 + 0.1 * 256 / 10000) = 0.1 * 1.00256 = 0.100256
    (6.6, 0.100256),
    # on target: error 0, unchanged
    (6.0, 0.1),
])
def test_adaptive_single_update(kl, expected):
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(kl, 256) == pytest.approx(expected, abs=ABS)
    assert ctl.value == pytest.approx(expected, abs=ABS)


def test_adaptive_two_updates_compound():
    """Two updates at KL 9: 0.1 * 1.00512^2 = 0.1 * 1.0102662 = 0.1010266."""
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 256)
    assert ctl.update(9.0, 256) == pytest.approx(0.1010266, abs=ABS)


def test_adaptive_moves_towards_target():
    """KL above target raises beta every step; KL below target lowers it; n_steps 0 changes nothing."""
    up, down = AdaptiveKLController(0.1, 6.0, 1000), AdaptiveKLController(0.1, 6.0, 1000)
    prev_up, prev_down = 0.1, 0.1
    for _ in range(20):
        assert up.update(7.5, 64) > prev_up
        assert down.update(4.0, 64) < prev_down
        prev_up, prev_down = up.value, down.value
    # 20 steps at error +0.2 (7.5/6 - 1 = 0.25, clipped) and -0.2 (4/6 - 1 = -0.333, clipped):
    # 0.1 * (1 + 0.2 * 64 / 1000)^20 = 0.1 * 1.0128^20 = 0.1289656; 0.1 * 0.9872^20 = 0.0772864
    assert up.value == pytest.approx(0.1289656, abs=ABS)
    assert down.value == pytest.approx(0.0772864, abs=ABS)
    assert up.update(100.0, 0) == prev_up


def test_adaptive_validates():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 10000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 6.0, 0)
    with pytest.raises(ValueError, match="non-finite"):
        AdaptiveKLController(0.1, 6.0, 10).update(float("nan"), 1)


def test_state_round_trip_through_json():
    """A controller restored from its JSON-dumped state continues with the same coefficient."""
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 256)
    state = json.loads(json.dumps(ctl.state_dict()))
    other = AdaptiveKLController(0.5, 1.0, 7)
    other.load_state_dict(state)
    assert (other.value, other.target, other.horizon) == (ctl.value, 6.0, 10000)
    assert other.update(3.0, 256) == ctl.update(3.0, 256)

    fixed = FixedKLController(0.05)
    restored = FixedKLController(1.0)
    restored.load_state_dict(json.loads(json.dumps(fixed.state_dict())))
    assert restored.value == 0.05
    with pytest.raises(ValueError, match="adaptive"):
        restored.load_state_dict(state)


def test_fixed_never_changes():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 3.0, 1e6, -2.0):
        assert ctl.update(kl, 256) == 0.05
    assert ctl.value == 0.05


def test_make_kl_controller():
    """A positive target gives the adaptive controller; None or 0 gives a fixed one."""
    ctl = make_kl_controller(0.1, 6.0, 10000)
    assert isinstance(ctl, AdaptiveKLController)
    assert (ctl.value, ctl.target, ctl.horizon) == (0.1, 6.0, 10000)
    for target in (None, 0.0):
        ctl = make_kl_controller(0.2, target, 10000)
        assert isinstance(ctl, FixedKLController) and ctl.value == 0.2
