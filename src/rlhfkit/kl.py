"""KL-penalty controllers: the coefficient beta in reward - beta * KL(pi || ref).

Plain Python, no tensors (and the closed-form KL of best-of-N, ``kl_bound``): a controller sees one float (the measured KL of a batch) and holds one
float (the coefficient). ``state_dict`` is JSON-serialisable so a checkpoint can resume the
coefficient exactly where it was.
"""

from __future__ import annotations

import math


class FixedKLController:
    """A constant coefficient: ``update`` returns it unchanged."""

    kind = "fixed"

    def __init__(self, value: float):
        if not value >= 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {value}")
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of the KL coefficient towards a target KL.

    Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") section 2.2:
      e = clip(KL / target - 1, -0.2, 0.2),   beta <- beta (1 + e * n_steps / horizon).
    The clip bounds how fast beta moves when the KL is far off target; ``horizon`` (in samples)
    sets the time scale, and ``n_steps`` is the number of samples since the last update, as in
    lm-human-preferences and TRL.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if not init_kl_coef >= 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"the KL horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        current_kl = float(current_kl)
        # A NaN KL would make the coefficient NaN for the rest of the run; fail loudly instead.
        if not math.isfinite(current_kl):
            raise ValueError(f"cannot adapt the KL coefficient to a non-finite KL ({current_kl})")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind", kind) != kind:
        raise ValueError(f"cannot load a {state['kind']!r} KL controller state into a {kind!r} one")


def make_kl_controller(kl_coef: float, kl_target: float | None, kl_horizon: int,
                       ) -> FixedKLController | AdaptiveKLController:
    """Adaptive when ``kl_target`` is set (not None and > 0), otherwise fixed at ``kl_coef``."""
    if kl_target is not None and kl_target > 0:
        return AdaptiveKLController(kl_coef, kl_target, kl_horizon)
    return FixedKLController(kl_coef)


def kl_bound(n: int) -> float:
    """log N - (N - 1) / N: the KL (nats) of best-of-N to the base policy, as usually quoted
    (Stiennon et al. 2020; an upper bound, Beirami et al. 2024)."""
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    return math.log(n) - (n - 1) / n
