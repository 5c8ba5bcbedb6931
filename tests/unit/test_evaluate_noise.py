"""The noise finder's pure parts: folds, the flag rule, precision and recall."""

import pytest

from rlhfkit.evaluate.noise import flag, fold_indices, precision_recall


def test_folds_partition_the_rows():
    folds = fold_indices(11, 3, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(11))
    assert sorted(map(len, folds)) == [3, 4, 4]
    assert folds == fold_indices(11, 3, seed=0) != fold_indices(11, 3, seed=1)


def test_flag_rule_and_precision_recall():
    p = [0.1, 0.95, 0.85, 0.5, 0.95]
    assert flag(p, 0.8) == [1, 4, 2]                 # most suspicious first, ties by index
    assert flag(p, 0.8, fraction=0.4) == [1, 4]      # round(0.4 * 5) = 2
    truth = [False, True, False, False, True]
    got = precision_recall([1, 4, 2], truth)
    # 2 of 3 flags are wrong labels; both wrong labels flagged: P = 2/3, R = 1, F1 = 0.8
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == 1.0 and got["f1"] == pytest.approx(0.8)
    assert precision_recall([], truth)["precision"] == 0.0
