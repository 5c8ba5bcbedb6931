"""Small statistics helpers shared by trainers and evaluation."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Preferred over the normal approximation because it stays inside [0, 1] and behaves at
    accuracies near 1, where reward models often are (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1; say so rather than trust the rounding
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993), seeded so reports repeat."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def win_rate(scores, baseline_scores, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired win rate of ``scores`` over ``baseline_scores`` (same prompts, same order): a win
    counts 1, a tie 0.5. Returns the rate and its 95% bootstrap interval."""
    if len(scores) != len(baseline_scores) or not len(scores):
        raise ValueError(f"win_rate needs two equal, non-empty lists; got {len(scores)} and {len(baseline_scores)}")
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)]
    low, high = bootstrap_ci(outcomes, n_boot=n_boot, seed=seed)
    return {"winrate": sum(outcomes) / len(outcomes), "winrate_ci": [low, high], "n": len(outcomes)}
