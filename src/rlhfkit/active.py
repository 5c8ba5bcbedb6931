"""Active selection of preference pairs: which unlabelled pairs to send to annotators next.

Labels cost money; a pair whose outcome every reward model already agrees on teaches little. Given
an ensemble of reward models (K members: bootstrap fits, seeds or heads), each candidate pair gets a
score of how much the members disagree about it:

- ``disagreement``: the variance over members of P(a > b) = sigmoid(r(a) - r(b)) (query by
  committee; Seung et al. 1992). A pair all members call a coin flip (identical responses, a tie
  in every feature) scores 0: nothing to learn there.
- ``uncertainty``: closeness of the members' mean P(a > b) to 0.5 (uncertainty sampling; Lewis &
  Gale 1994). Simpler, but it favours such ties.

A share ``random_fraction`` of every batch is drawn uniformly from the unlabelled pool instead, so
that (a) the labelled set keeps an unbiased sample of the pair distribution (accuracy estimated on
the random share alone is unbiased) and (b) the selection cannot lock onto one region.
"""

from __future__ import annotations

import numpy as np

CRITERIA = ("disagreement", "uncertainty")


def pair_scores(margins_KN, criterion: str = "disagreement") -> np.ndarray:
    """(N,) informativeness of each candidate from the ensemble's margins r(a) - r(b), (K, N)."""
    m = np.asarray(margins_KN, dtype=float)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(f"margins must be (members, candidates); got shape {m.shape}")
    p = 1.0 / (1.0 + np.exp(-m))  # (K, N)
    if criterion == "disagreement":
        return p.var(axis=0)
    if criterion == "uncertainty":
        return 0.5 - np.abs(p.mean(axis=0) - 0.5)
    raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")


def select_pairs(margins_KN, n: int, labelled=(), random_fraction: float = 0.25, seed: int = 0,
                 criterion: str = "disagreement") -> tuple[list[int], list[int]]:
    """Indices of the next ``n`` pairs to label: (chosen by score, drawn at random).

    ``round(random_fraction * n)`` are drawn uniformly (without replacement, from ``seed``) among
    candidates not in ``labelled``; the rest are the highest-scoring of the remaining ones (ties:
    lower index first). Fewer than ``n`` come back only when the pool runs out."""
    if not 0.0 <= random_fraction <= 1.0:
        raise ValueError(f"random_fraction must be in [0, 1]; got {random_fraction}")
    scores = pair_scores(margins_KN, criterion)
    done = set(int(i) for i in labelled)
    free = np.array([i for i in range(len(scores)) if i not in done], dtype=int)
    n = min(n, len(free))
    n_random = int(round(random_fraction * n))
    rng = np.random.default_rng(seed)
    drawn = sorted(int(i) for i in rng.choice(free, size=n_random, replace=False)) if n_random else []
    rest = np.setdiff1d(free, drawn)
    order = rest[np.lexsort((rest, -scores[rest]))]  # by score, descending; index breaks ties
    return [int(i) for i in order[:n - n_random]], drawn


def labels_to_reach(budgets: list[int], accuracy: list[float], target: float) -> int | None:
    """The smallest budget whose accuracy is at least ``target`` (None if none reaches it)."""
    for b, a in zip(budgets, accuracy):
        if a >= target:
            return b
    return None
