"""Statistics as pure functions of numbers and labels: no model, no database, no web.

Intervals and win rates (evaluation, the reward-model report, the trainers' accuracy):

- ``wilson_interval``: the Wilson score interval of a binomial proportion;
- ``bootstrap_ci``, ``win_rate``, ``paired_outcomes``, ``length_controlled_win_rate`` (with
  ``logistic_fit``), ``calibration``, ``slope_ci``.

Agreement between annotators (the annotation server's dashboard, judge-vs-human agreement). Choices
are "a", "b" or "tie" (``CATEGORIES``), compared in the imported order ("a" = ``response_a``):

- Cohen's kappa (Cohen 1960) for two annotators on the items both labelled:
  kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e = sum_k p1(k) p2(k).
- Fleiss' kappa (Fleiss 1971) over items with at least two labels. With n_i labels on item i and
  n_ik of them in category k: P_i = (sum_k n_ik^2 - n_i) / (n_i (n_i - 1)), P = mean_i P_i,
  p_k = sum_i n_ik / sum_i n_i, P_e = sum_k p_k^2, kappa = (P - P_e) / (1 - P_e). With the same
  n on every item this is Fleiss' formula exactly; with varying n it weights items equally.
- Krippendorff's alpha (nominal), from the ``krippendorff`` package; it handles missing labels.
- Agreement with the majority is leave-one-out: an annotator's label is compared with the strict
  majority of the *other* labels on the item (items where the others tie are left out), so a
  lone label never agrees with itself.
- Position bias: the share of non-tie labels that chose the response shown on the left
  (0.5 is unbiased).

Kappas and alpha are None where undefined (no items, or chance agreement of 1).

Over-optimisation (``DivergenceMonitor``, used by the online trainers): the training reward keeps
rising while a held-out reward falls. Goodhart's law in RLHF (Gao et al. 2023, "Scaling laws for
reward model overoptimization"): past some KL the proxy reward the policy optimises keeps
climbing while the true objective turns down. A second reward the policy never trains on (another reward model, a judge, a rule) is the
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
from collections import Counter, defaultdict
from itertools import combinations
from typing import Iterable, Sequence

CATEGORIES = ("a", "b", "tie")

# --------------------------------------------------------------------------- intervals and win rates


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


# --------------------------------------------------------------------------- agreement


def majority(votes: Iterable[str]) -> str | None:
    """The strict plurality of ``votes``; None when empty or when the top two tie."""
    ranked = Counter(votes).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def agreement_fraction(votes: Sequence[str]) -> float | None:
    """Share of ``votes`` equal to their majority (None without one)."""
    top = majority(votes)
    return None if top is None else sum(v == top for v in votes) / len(votes)


def cohen_kappa(x: Sequence[str], y: Sequence[str]) -> float | None:
    """Cohen's kappa of two equally long label sequences (same items in the same order)."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa needs equally long sequences, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[k] * cy[k] for k in cx) / (n * n)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from per-item category counts (rows: items, columns: categories).

    Items with fewer than two labels carry no agreement information and are left out.
    """
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    p_item = [(sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    total = sum(sum(r) for r in rows)
    p_cat = [sum(r[k] for r in rows) / total for k in range(len(rows[0]))]
    p_bar, p_e = sum(p_item) / len(rows), sum(p * p for p in p_cat)
    if p_e == 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha(units: dict, categories: Sequence[str] = CATEGORIES) -> float | None:
    """Nominal Krippendorff's alpha of ``{item: {annotator: choice}}`` (missing labels allowed)."""
    import krippendorff
    import numpy as np

    annotators = sorted({u for votes in units.values() for u in votes})
    if len(annotators) < 2 or sum(len(v) >= 2 for v in units.values()) == 0:
        return None
    code = {c: i for i, c in enumerate(categories)}
    data = np.full((len(annotators), len(units)), np.nan)
    row = {u: i for i, u in enumerate(annotators)}
    for j, votes in enumerate(units.values()):
        for u, c in votes.items():
            data[row[u], j] = code[c]
    pairable = data[:, (~np.isnan(data)).sum(0) >= 2]  # a unit labelled once adds nothing
    if len(set(pairable[~np.isnan(pairable)].tolist())) < 2:  # one value among them: alpha is 0/0, undefined
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def position_bias(labels: Iterable[tuple[str, str]]) -> tuple[float | None, int]:
    """(share of non-tie labels choosing the left response, number of non-tie labels) of (choice, left)."""
    decided = [(c, left) for c, left in labels if c != "tie" and left is not None]
    if not decided:
        return None, 0
    return sum(c == left for c, left in decided) / len(decided), len(decided)


def majority_agreement(units: dict) -> dict[str, tuple[int, int]]:
    """{annotator: (labels agreeing with the others' majority, labels compared)}, leave-one-out."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for votes in units.values():
        for u, c in votes.items():
            top = majority(v for w, v in votes.items() if w != u)
            if top is not None:
                out[u][0] += c == top
                out[u][1] += 1
    return {u: (a, n) for u, (a, n) in out.items()}


def pairwise_kappas(units: dict) -> list[dict]:
    """Cohen's kappa for every pair of annotators sharing at least one item."""
    by_annotator: dict[str, dict] = defaultdict(dict)
    for item, votes in units.items():
        for u, c in votes.items():
            by_annotator[u][item] = c
    out = []
    for u, v in combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[u]) & set(by_annotator[v]), key=str)
        if shared:
            k = cohen_kappa([by_annotator[u][i] for i in shared], [by_annotator[v][i] for i in shared])
            out.append({"annotators": [u, v], "kappa": k, "items": len(shared)})
    return out


# --------------------------------------------------------------------------- over-optimisation


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
