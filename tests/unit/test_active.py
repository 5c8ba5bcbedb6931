"""Active selection of pairs to label (rlhfkit.active): scores, the random share, labels-to-reach."""

import math

import numpy as np
import pytest

from rlhfkit.active import labels_to_reach, pair_scores, select_pairs

# Two ensemble members' margins r(a) - r(b) on five candidate pairs.
MARGINS = [[0.0, 2.0, -2.0, 1.0, 0.0],
           [0.0, -2.0, -2.0, -1.0, 0.0]]


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_disagreement_is_the_variance_of_the_members_probabilities():
    """Candidate 1: p = sigmoid(2) = 0.88080 and sigmoid(-2) = 0.11920, population variance
    ((0.88080 - 0.11920) / 2)^2 = 0.380797^2 = 0.145006; candidate 3: ((0.73106 - 0.26894) / 2)^2
    = 0.231059^2 = 0.053388; members that agree (0, 2, 4) score 0, even where both say 0.5."""
    s = pair_scores(MARGINS)
    assert s == pytest.approx([0.0, 0.145006, 0.0, 0.053388, 0.0], abs=1e-6)
    assert s[1] == pytest.approx(((_sig(2) - _sig(-2)) / 2) ** 2, rel=1e-12)


def test_uncertainty_is_closeness_of_the_mean_probability_to_a_half():
    """Mean p: 0.5 for candidates 0, 1, 3, 4 (score 0.5); candidate 2: 0.11920 -> score 0.11920."""
    assert pair_scores(MARGINS, "uncertainty") == pytest.approx([0.5, 0.5, _sig(-2), 0.5, 0.5], abs=1e-9)


def test_selection_takes_the_top_scores_skips_labelled_and_breaks_ties_by_index():
    chosen, drawn = select_pairs(MARGINS, 2, labelled=[1], random_fraction=0.0)
    assert (chosen, drawn) == ([3, 0], [])  # 1 is labelled; 0, 2, 4 tie at 0 -> lowest index
    chosen, drawn = select_pairs(MARGINS, 2, labelled=[1], random_fraction=0.0, criterion="uncertainty")
    assert chosen == [0, 3]


def test_random_share_is_respected_disjoint_and_uniform():
    for seed in range(5):
        chosen, drawn = select_pairs(MARGINS, 2, labelled=[1], random_fraction=0.5, seed=seed)
        assert len(drawn) == 1 and len(chosen) == 1 and drawn[0] in (0, 2, 3, 4)
        assert chosen == ([3] if drawn != [3] else [0])  # the best of what the draw left
        assert select_pairs(MARGINS, 2, labelled=[1], random_fraction=0.5, seed=seed) == (chosen, drawn)
    counts = np.zeros(5)
    for seed in range(400):  # each of the 4 free candidates drawn w.p. 1/4: mean 100, sd 8.7
        counts[select_pairs(MARGINS, 2, labelled=[1], random_fraction=0.5, seed=seed)[1]] += 1
    assert counts[1] == 0 and all(65 < c < 135 for c in counts[[0, 2, 3, 4]]), counts


def test_pool_running_out_and_bad_arguments():
    chosen, drawn = select_pairs(MARGINS, 10, labelled=[0, 1], random_fraction=0.25)
    assert sorted(chosen + drawn) == [2, 3, 4] and len(drawn) == 1  # round(0.25 * 3) = 1
    with pytest.raises(ValueError, match="random_fraction"):
        select_pairs(MARGINS, 1, random_fraction=1.5)
    with pytest.raises(ValueError, match="criterion"):
        pair_scores(MARGINS, "entropy")


def test_labels_to_reach():
    assert labels_to_reach([64, 128, 256], [0.6, 0.7, 0.8], 0.7) == 128
    assert labels_to_reach([64, 128, 256], [0.6, 0.7, 0.8], 0.81) is None
