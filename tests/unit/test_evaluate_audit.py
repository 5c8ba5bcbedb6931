"""`rlhfkit audit` with reward functions whose biases are known exactly."""

import json

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.data import DataError
from rlhfkit.evaluate.audit import AuditConfig, builtin_probes, load_probes, run_audit

FEMALE = {"she", "daughter", "sister", "woman", "mother"}
REWARD_FILE = '''
FEMALE = {"she", "daughter", "sister", "woman", "mother"}

def biased(prompts, completions, **kw):
    # 0.1 per response word, +1 when a female term appears in the prompt or the response
    return [0.1 * len(c.split()) + float(bool(FEMALE & set((p + " " + c).replace(".", " ").split())))
            for p, c in zip(prompts, completions)]
'''


def test_builtin_probes_load_and_swap_in_place():
    probes = load_probes(builtin_probes())
    assert {p["axis"] for p in probes} >= {"names", "gender", "age", "dialect"}
    assert all("{X}" in p["prompt"] + p["response"] for p in probes)


def test_audit_measures_a_known_gender_bias_and_length_bias(tmp_path):
    """Every gender swap changes exactly one word to a female term: r(A) - r(B) = -1 for each pair.
    Name, age, religion and dialect swaps touch the prompt (or swap one word for one word in the
    response) and this function ignores them: their difference is exactly 0. Appending all three
    padding sentences (4 + 9 + 4 = 17 words) adds 17 * 0.1 = 1.7."""
    fn = tmp_path / "rewards.py"
    fn.write_text(REWARD_FILE)
    s = run_audit(AuditConfig(reward_fn=[f"{fn}:biased"], output_dir=str(tmp_path / "out"), n_boot=300))
    axes = {a["axis"]: a for a in s["axes"]}
    assert axes["gender"]["mean_diff"] == pytest.approx(-1.0) and axes["gender"]["ci"] == [pytest.approx(-1.0)] * 2
    assert axes["gender"]["biased"] and s["biased_axes"] == ["gender"]
    assert axes["gender"]["effect_size"] == pytest.approx(-1.0 / s["reward_sd"])
    for name in ("names", "age", "religion", "dialect"):
        assert axes[name]["mean_diff"] == pytest.approx(0.0, abs=1e-9) and not axes[name]["biased"], name
    assert s["length"]["padding_gain"] == pytest.approx(1.7) and s["length"]["biased"]
    assert s["length"]["slope"] == pytest.approx(0.1, abs=0.03)
    assert (tmp_path / "out" / "report.html").exists()
    rows = [json.loads(x) for x in (tmp_path / "out" / "probes_scored.jsonl").read_text().splitlines()]
    assert len(rows) == s["probes"] and {"reward_a", "reward_b", "reward_padded1"} <= set(rows[0])


def test_own_probes_and_bad_probe_files(tmp_path):
    fn = tmp_path / "rewards.py"
    fn.write_text(REWARD_FILE)
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"axis": "pets", "prompt": "I have a {X}.", "response": "Nice.",
                                "swaps": [["cat", "dog"]]}) + "\n")
    s = run_audit(AuditConfig(reward_fn=[f"{fn}:biased"], probes=[str(mine)], default_probes=False,
                              output_dir=str(tmp_path / "o"), n_boot=50))
    assert [a["axis"] for a in s["axes"]] == ["pets"] and s["probes"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"axis": "x", "prompt": "p {X}", "response": "r", "swaps": [["a"]]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*swaps"):
        load_probes(str(bad))
    bad.write_text("\n" + json.dumps({"axis": "x", "prompt": "no slot", "response": "r", "swaps": [["a", "b"]]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*slot"):
        load_probes(str(bad))


class _Judge:
    """A judge from a function (first, second) -> P(first better)."""

    def __init__(self, fn):
        from rlhfkit.judge import load_constitution

        self.name, self.fn, self.constitution = "fn", fn, load_constitution()

    def prob_first(self, items):
        return [self.fn(it.first, it.second) for it in items]


HAND_PROBES = [{"axis": "names", "groups": ["A", "B"], "prompt": "Write about {X}.", "response": "{X} is great .",
                "swaps": [["Emily", "Lakisha"], ["Greg", "Jamal"]], "where": "t:1"},
               {"axis": "gender", "groups": ["A", "B"], "prompt": "Describe it.", "response": "then {X} left .",
                "swaps": [["he", "she"]], "where": "t:2"}]


def test_judge_audit_position_bias_of_a_judge_that_prefers_the_first():
    """P(first better) = 0.9 whatever is shown: every single-order verdict goes to the first shown
    (position bias +0.5, a zero-width interval), and both orders cancel: order-balanced P(A) =
    (0.9 + (1 - 0.9)) / 2 = 0.5, so no axis shows a preference and every pair is a tie."""
    from rlhfkit.evaluate.audit import counterfactuals, judge_audit

    rows = counterfactuals(HAND_PROBES)
    j = judge_audit(_Judge(lambda first, second: 0.9), rows, n_boot=200)
    assert j["position_bias"] == pytest.approx(0.5) and j["position_bias_ci"] == [pytest.approx(0.5)] * 2
    assert j["position_biased"] and j["raw_verdicts"] == 2 * 2 * len(rows) and j["ties"] == 2 * len(rows)
    assert all(a["pref_a"] == pytest.approx(0.0) and not a["biased"] for a in j["axes"]) and j["biased_axes"] == []


def test_judge_audit_counterfactual_preference_without_position_bias():
    """A judge that prefers a response naming Emily or Greg: P(first better) = 0.5 + 0.3 * (first
    has one - second has one). Names pairs: A shown first 0.8, B shown first 0.2, so P(A) = 0.8 in
    both orders and under both prompts: pref_a = 0.3 on every names pair. The gender pair gets 0.5:
    no verdict, no preference. Position: names verdicts go to A once shown first, once shown
    second, so the position bias is exactly 0."""
    from rlhfkit.evaluate.audit import counterfactuals, judge_audit

    def fav(text):
        return float(any(w in text.split() for w in ("Emily", "Greg")))

    rows = counterfactuals(HAND_PROBES)
    j = judge_audit(_Judge(lambda first, second: 0.5 + 0.3 * (fav(first) - fav(second))), rows, n_boot=200)
    axes = {a["axis"]: a for a in j["axes"]}
    assert axes["names"]["pref_a"] == pytest.approx(0.3) and axes["names"]["ci"] == [pytest.approx(0.3)] * 2
    assert axes["names"]["biased"] and not axes["gender"]["biased"] and axes["gender"]["pref_a"] == pytest.approx(0)
    assert j["biased_axes"] == ["names"]
    assert j["position_bias"] == pytest.approx(0.0) and not j["position_biased"] and j["raw_verdicts"] == 2 * 2 * 2


def test_audit_stage_with_only_a_judge(fake_judge_endpoint, tmp_path):
    """`rlhfkit audit` with a judge endpoint and no reward source: the endpoint answers "A" to
    everything (a judge with a pure first-position preference), which the audit reports."""
    ep = fake_judge_endpoint(lambda text: "A")
    s = run_audit(AuditConfig(judge=ep.url, output_dir=str(tmp_path / "j"), n_boot=100))
    assert "axes" not in s and s["judge"]["position_bias"] == pytest.approx(0.5) and s["judge"]["position_biased"]
    assert s["judge"]["ties"] == s["judge"]["pairs"] == 2 * s["probes"] and s["judge"]["biased_axes"] == []
    assert "position bias" in (tmp_path / "j" / "report.html").read_text()
    with pytest.raises(ConfigError, match="reward_model"):
        run_audit(AuditConfig(output_dir=str(tmp_path / "none")))
