"""Over-optimisation monitor: the training reward keeps rising while a held-out reward falls.

Goodhart's law in RLHF (Gao et al. 2023, "Scaling laws for reward model overoptimization"): past
some KL the proxy reward the policy optimises keeps climbing while the true objective turns down.
A second reward the policy never trains on (another reward model, a judge, a rule) is the
practical stand-in for the true one. The online trainers score every batch with it, log it as
``heldout_reward`` beside ``reward``, and ask :class:`DivergenceMonitor` each step whether the two
have parted ways.

The test compares the mean of the last ``window`` steps with the mean of the ``window`` steps
before, for each reward, in units of its standard error (a two-sample z statistic), so per-step
sampling noise alone rarely triggers it: a warning needs the training reward up by more than
``z`` standard errors and the held-out reward down by more than ``z``.
"""

from __future__ import annotations

import math


def change_z(values: list[float], window: int) -> float:
    """(mean of the last ``window`` values - mean of the ``window`` before) / its standard error.

    The standard error is sqrt(var_a / w + var_b / w) with unbiased variances; when both windows
    are constant it is 0 and the result is +-inf for any change (0 for none).
    """
    if window < 2 or len(values) < 2 * window:
        raise ValueError(f"change_z needs window >= 2 and 2*window values; got {window} and {len(values)}")
    a, b = values[-2 * window:-window], values[-window:]
    ma, mb = sum(a) / window, sum(b) / window
    va = sum((x - ma) ** 2 for x in a) / (window - 1)
    vb = sum((x - mb) ** 2 for x in b) / (window - 1)
    se = math.sqrt(va / window + vb / window)
    if se == 0:
        return 0.0 if mb == ma else math.copysign(math.inf, mb - ma)
    return (mb - ma) / se


class DivergenceMonitor:
    """Feed it (training reward, held-out reward) once per step; it says when they diverge."""

    def __init__(self, window: int = 10, z: float = 2.0, state: dict | None = None):
        if window < 2:
            raise ValueError(f"overopt_window must be >= 2, got {window}")
        self.window, self.z = window, z
        state = state or {}
        self.train: list[float] = list(state.get("train", []))
        self.heldout: list[float] = list(state.get("heldout", []))
        self.warned_at: list[int] = list(state.get("warned_at", []))   # 1-based steps where the test fired
        self.steps: int = int(state.get("steps", len(self.train)))

    def state(self) -> dict:
        """What a checkpoint keeps: the last 2 * window values of each reward and the warnings so far."""
        return {"train": self.train[-2 * self.window:], "heldout": self.heldout[-2 * self.window:],
                "warned_at": list(self.warned_at), "steps": self.steps}

    def update(self, train_reward: float, heldout_reward: float) -> dict:
        """Metrics for this step: the two z statistics (once 2*window steps exist) and
        ``overopt_warning`` (1 while diverging, else 0)."""
        self.steps += 1
        self.train.append(float(train_reward))
        self.heldout.append(float(heldout_reward))
        if len(self.train) < 2 * self.window:
            return {"overopt_warning": 0}
        zt, zh = change_z(self.train, self.window), change_z(self.heldout, self.window)
        diverging = zt > self.z and zh < -self.z
        if diverging:
            self.warned_at.append(self.steps)
        return {"overopt_warning": int(diverging), "overopt_z_train": _finite(zt), "overopt_z_heldout": _finite(zh)}


def _finite(z: float) -> float:
    return max(-1e6, min(1e6, z))
