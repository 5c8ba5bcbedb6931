"""`rlhfkit audit` with reward functions whose biases are known exactly."""

import json

import pytest

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
