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


def paired_outcomes(scores, baseline_scores) -> list[float]:
    """1 where ``scores`` beats the baseline on the same item, 0.5 for a tie, 0 for a loss."""
    if len(scores) != len(baseline_scores) or not len(scores):
        raise ValueError(f"need two equal, non-empty lists; got {len(scores)} and {len(baseline_scores)}")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)]


def logistic_fit(x, y, ridge: float = 1e-3, iters: int = 50):
    """Intercept and slope of a logistic regression of ``y`` (in [0, 1]: ties may be 0.5) on ``x``.

    Newton-Raphson on the mean log-loss plus ``ridge`` * slope^2 / 2 (a small ridge keeps the fit
    finite when x separates the outcomes). ``x`` may be (N,) or (B, N) for B fits at once.
    Returns (intercept, slope) as floats, or as (B,) arrays for batched input.
    """
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    single = x.ndim == 1
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    theta = np.zeros((x.shape[0], 2))
    n = x.shape[1]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :1] + theta[:, 1:] * x)))
        r, w = y - p, p * (1 - p)
        g = np.stack([r.sum(1), (r * x).sum(1) - ridge * n * theta[:, 1]], 1)      # gradient of the log-lik
        h00, h01 = w.sum(1) + 1e-9, (w * x).sum(1)
        h11 = (w * x * x).sum(1) + ridge * n
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return (float(theta[0, 0]), float(theta[0, 1])) if single else (theta[:, 0], theta[:, 1])


def length_controlled_win_rate(outcomes, lengths, baseline_lengths, n_boot: int = 1000, seed: int = 0) -> dict:
    """The win rate the policy would have at equal length to the baseline, with a 95% bootstrap CI.

    As AlpacaEval's length-controlled win rate (Dubois et al. 2024, eq. 2, without the per-prompt
    difficulty term): logit P(win) = a + b * tanh(dlen / sd(dlen)), dlen = policy minus baseline
    length; the controlled rate is sigmoid(a), the predicted win rate at dlen = 0. Ties count 0.5.
    The interval resamples items and refits (a percentile bootstrap).
    """
    import numpy as np

    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    if y.size == 0 or y.size != d.size:
        raise ValueError(f"need equal, non-empty outcomes and lengths; got {y.size} and {d.size}")
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    a, b = logistic_fit(x, y)
    idx = np.random.default_rng(seed).integers(0, y.size, size=(n_boot, y.size))
    ab, _ = logistic_fit(x[idx], y[idx])
    boots = 1.0 / (1.0 + np.exp(-ab))
    return {"lc_winrate": float(1.0 / (1.0 + np.exp(-a))), "lc_winrate_ci": [float(np.quantile(boots, 0.025)),
                                                                            float(np.quantile(boots, 0.975))],
            "length_coef": float(b)}


def calibration(probs, correct, bins: int = 10) -> dict:
    """Reliability of predicted probabilities: per equal-width bin of ``probs`` the mean predicted
    probability, the observed frequency of ``correct`` and the count; and the expected calibration
    error ECE = sum_b n_b / N * |freq_b - conf_b| (Guo et al. 2017). Empty bins are left out."""
    import numpy as np

    p, c = np.asarray(probs, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if p.size == 0 or p.size != c.size:
        raise ValueError(f"need equal, non-empty probs and outcomes; got {p.size} and {c.size}")
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, freq = float(p[sel].mean()), float(c[sel].mean())
            rows.append({"bin_low": b / bins, "bin_high": (b + 1) / bins, "confidence": conf,
                         "accuracy": freq, "count": int(sel.sum())})
            ece += sel.sum() / p.size * abs(freq - conf)
    return {"bins": rows, "ece": float(ece)}


def slope_ci(x, y, n_boot: int = 1000, seed: int = 0) -> dict:
    """Least-squares slope of ``y`` on ``x`` with a 95% bootstrap CI (resampling (x, y) pairs),
    and the Pearson correlation."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or x.size != y.size:
        raise ValueError(f"need at least 3 equal-length points; got {x.size} and {y.size}")

    def slope(xs, ys):
        xc = xs - xs.mean(-1, keepdims=True)
        var = (xc * xc).sum(-1)
        return np.where(var > 0, (xc * (ys - ys.mean(-1, keepdims=True))).sum(-1) / np.where(var > 0, var, 1), 0.0)

    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    boots = slope(x[idx], y[idx])
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
    return {"slope": float(slope(x, y)), "slope_ci": [float(np.quantile(boots, 0.025)),
                                                      float(np.quantile(boots, 0.975))], "corr": corr}
