"""Agreement maths (``rlhfkit.stats``) and the annotation server's statistics and assignment rules, against
numbers derived by hand."""

import pytest

from rlhfkit import stats as st
from rlhfkit.annotate import agreement as ag
from rlhfkit.annotate.assignment import gold_block_size, gold_due


def test_majority_is_a_strict_plurality():
    assert st.majority(["a", "a", "b"]) == "a"
    assert st.majority(["tie", "tie", "a"]) == "tie"
    assert st.majority(["a", "b"]) is None  # top two tie
    assert st.majority(["a", "b", "tie"]) is None
    assert st.majority([]) is None
    assert st.agreement_fraction(["a", "a", "b"]) == pytest.approx(2 / 3)
    assert st.agreement_fraction(["a", "b"]) is None


def test_cohen_kappa_by_hand():
    """x = a a b b a tie, y = a b b b a a.
    p_o = 4/6 (items 1, 3, 4, 5 agree). Marginals: x a=3 b=2 tie=1, y a=3 b=3.
    p_e = (3*3 + 2*3 + 1*0) / 36 = 15/36. kappa = (24/36 - 15/36) / (21/36) = 9/21 = 3/7."""
    x = ["a", "a", "b", "b", "a", "tie"]
    y = ["a", "b", "b", "b", "a", "a"]
    assert st.cohen_kappa(x, y) == pytest.approx(3 / 7, abs=1e-12)
    assert st.cohen_kappa(y, x) == pytest.approx(3 / 7, abs=1e-12)  # symmetric
    assert st.cohen_kappa(x, x) == pytest.approx(1.0)
    # Perfect disagreement on balanced labels: p_o = 0, p_e = 1/2 -> kappa = -1.
    assert st.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert st.cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined
    assert st.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        st.cohen_kappa(["a"], ["a", "b"])


def test_fleiss_kappa_by_hand():
    """Items (a a a), (a a b), (b b tie): counts [3,0,0], [2,1,0], [0,2,1].
    P_i = (sum n_ik^2 - 3) / 6 -> 1, 1/3, 1/3; P = 5/9.
    p = (5/9, 3/9, 1/9); P_e = 35/81. kappa = (45/81 - 35/81) / (46/81) = 10/46 = 5/23."""
    assert st.fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 2, 1]]) == pytest.approx(5 / 23, abs=1e-12)
    # An item with a single label carries no agreement information and changes nothing.
    assert st.fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 2, 1], [0, 1, 0]]) == pytest.approx(5 / 23, abs=1e-12)
    assert st.fleiss_kappa([[0, 1, 0]]) is None
    assert st.fleiss_kappa([[2, 0, 0], [3, 0, 0]]) is None  # one category throughout: P_e = 1


def test_fleiss_kappa_matches_the_published_example():
    """Fleiss (1971) as worked in Wikipedia's "Fleiss' kappa" article: 10 items, 14 raters,
    5 categories; P = 0.378, P_e = 0.213, kappa = 0.210."""
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert st.fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_krippendorff_alpha_by_hand():
    """Two annotators, four items: (a,a) (a,b) (b,b) (a,a). Coincidences o_aa=4, o_ab=o_ba=1,
    o_bb=2; n_a=5, n_b=3, n=8. D_o = 2/8, D_e = 2*5*3/(8*7) = 30/56; alpha = 1 - 7/15 = 8/15."""
    units = {1: {"u": "a", "v": "a"}, 2: {"u": "a", "v": "b"}, 3: {"u": "b", "v": "b"}, 4: {"u": "a", "v": "a"}}
    assert st.krippendorff_alpha(units) == pytest.approx(8 / 15, abs=1e-9)
    # Missing labels are allowed: a unit with one label adds nothing.
    assert st.krippendorff_alpha({**units, 5: {"u": "tie"}}) == pytest.approx(8 / 15, abs=1e-9)
    assert st.krippendorff_alpha({1: {"u": "a", "v": "a"}}) is None  # one value: undefined
    assert st.krippendorff_alpha({1: {"u": "a"}, 2: {"v": "b"}}) is None  # nothing pairable


def test_alpha_is_undefined_when_the_pairable_labels_use_one_value():
    """Early in a round: the pairs labelled twice all agree on "a"; a pair labelled once says "b".
    Only pairable values count (D_e = 0/0 among them), so alpha is undefined (None), never NaN,
    and ``GET /api/stats`` (strict JSON) can send the statistics (it answered 500 on the NaN)."""
    import json

    units = {1: {"x": "a", "y": "a"}, 2: {"x": "a", "y": "a"}, 3: {"z": "b"}}
    assert st.krippendorff_alpha(units) is None
    rows = [{"task_id": t, "annotator": u, "kind": "pair", "choice": c, "left": "a", "gold": None}
            for t, votes in units.items() for u, c in votes.items()]
    json.dumps(ag.compute_stats(rows), allow_nan=False)  # raises on NaN or inf


def test_position_bias_counts_left_wins_among_decided_labels():
    # (choice, left): decided labels 4, of which (a, left a) and (b, left b) chose the left one.
    labels = [("a", "a"), ("b", "a"), ("a", "b"), ("tie", "a"), ("b", "b")]
    assert st.position_bias(labels) == (0.5, 4)
    assert st.position_bias([("a", "a"), ("b", "b"), ("b", "b")]) == (1.0, 3)
    assert st.position_bias([("tie", "a")]) == (None, 0)


def test_agreement_with_majority_is_leave_one_out():
    """i1 {u1 a, u2 a, u3 b}: only u3 has a majority among the others (a, a) and disagrees.
    i2 {u1 a, u2 b, u3 b}: only u1 does (b, b) and disagrees. i3 {u1 tie, u2 tie}: both agree.
    u1: 1 of 2, u2: 1 of 1, u3: 0 of 1."""
    units = {"i1": {"u1": "a", "u2": "a", "u3": "b"}, "i2": {"u1": "a", "u2": "b", "u3": "b"},
             "i3": {"u1": "tie", "u2": "tie"}}
    assert st.majority_agreement(units) == {"u1": (1, 2), "u2": (1, 1), "u3": (0, 1)}


def test_pairwise_kappas_use_shared_items_only():
    units = {1: {"u": "a", "v": "a", "w": "b"}, 2: {"u": "b", "v": "b"}, 3: {"u": "a", "w": "a"}}
    got = {tuple(k["annotators"]): (k["kappa"], k["items"]) for k in st.pairwise_kappas(units)}
    assert got[("u", "v")] == (pytest.approx(1.0), 2)
    # u, w share items 1 and 3: (a, b) and (a, a). p_o = 1/2; u: a=2, w: a=1 b=1; p_e = 2/4 -> kappa 0.
    assert got[("u", "w")] == (pytest.approx(0.0), 2)
    # v, w share item 1 only: (a, b). p_o = 0, p_e = 0 -> kappa 0.
    assert got[("v", "w")] == (pytest.approx(0.0), 1)


def _row(task, who, choice, left="a", gold=None, kind="pair"):
    return {"task_id": task, "annotator": who, "choice": choice, "left": left, "gold": gold, "kind": kind}


def test_compute_stats_gold_accuracy_and_flags():
    rows = []
    # Six gold pairs (answer a): "good" is right on all, "sloppy" on one of six.
    for t in range(6):
        rows.append(_row(t, "good", "a", gold="a"))
        rows.append(_row(t, "sloppy", "a" if t == 0 else "b", gold="a", left="b"))
    rows.append(_row(99, "good", None, kind="demonstration", left=None))
    stats = ag.compute_stats(rows)
    good, sloppy = stats["annotators"]["good"], stats["annotators"]["sloppy"]
    assert good["gold_accuracy"] == 1.0 and good["gold_labels"] == 6
    assert sloppy["gold_accuracy"] == pytest.approx(1 / 6)
    assert any(f.startswith("gold accuracy 0.17 on 6") for f in sloppy["flags"])
    # With two annotators the leave-one-out majority is the other one: both agree on 1 of 6 and both
    # are flagged for it; only gold tells who is right.
    assert good["agreement_with_majority"] == pytest.approx(1 / 6) and good["majority_items"] == 6
    assert [f.split(" on ")[0] for f in good["flags"]] == ["agrees with the majority"]
    assert stats["flagged"] == ["good", "sloppy"]
    assert good["demonstrations"] == 1 and stats["labels"]["demonstrations"] == 1
    assert stats["labels"]["by_choice"] == {"a": 7, "b": 5, "tie": 0}
    # "sloppy" saw response b on the left and chose b five times out of six.
    assert sloppy["position_bias"] == pytest.approx(5 / 6)
    # Two annotators disagreeing on 5 of 6 items: Cohen's kappa by hand.
    # good: a x6; sloppy: a x1, b x5. p_o = 1/6; p_e = (6*1)/36 = 1/6 -> kappa 0.
    assert stats["cohen_kappa"] == [{"annotators": ["good", "sloppy"], "kappa": pytest.approx(0.0), "items": 6}]


def test_flags_need_enough_evidence():
    base = {"gold_labels": 2, "gold_accuracy": 0.0, "majority_items": 4, "agreement_with_majority": 0.0,
            "position_labels": 9, "position_bias": 1.0}
    assert ag.flags_for(base) == []  # too few labels for any verdict
    much = {**base, "gold_labels": 3, "majority_items": 5, "position_labels": 10}
    assert len(ag.flags_for(much)) == 3
    fine = {**much, "gold_accuracy": 0.9, "agreement_with_majority": 0.8, "position_bias": 0.55}
    assert ag.flags_for(fine) == []


@pytest.mark.parametrize("rate,expected", [(0.25, 10), (0.2, 8), (0.5, 20), (1.0, 40), (0.0, 0)])
def test_gold_rate_is_exact_per_block(rate, expected):
    """40 tasks served one after another, gold always available: exactly 40 * rate are gold, one in
    each block of round(1/rate) tasks."""
    for user in (1, 2, 3):
        gold = []
        for served in range(40):
            gold.append(gold_due(user, served, sum(gold), rate))
        assert sum(gold) == expected
        size = gold_block_size(rate)
        if size:
            assert all(sum(gold[b:b + size]) == 1 for b in range(0, 40, size))


def test_gold_position_differs_between_annotators():
    positions = {next(i for i in range(5) if gold_due(user, i, 0, 0.2)) for user in range(30)}
    assert len(positions) >= 3  # not always the same slot of the block
