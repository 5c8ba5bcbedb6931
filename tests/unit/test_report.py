"""Reports are self-contained (no network), escaped, and carry their figures inline."""

import base64
import json
import re

from rlhfkit import report


def test_report_is_self_contained_and_escaped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    path = report.write(tmp_path / "r.html", "t <1>", [
        ("numbers", report.table([{"name": "<script>alert(1)</script>", "acc": 0.91234}])),
        ("curves", report.curves({"run": metrics}, ["loss"])),
        ("samples", report.side_by_side(["p & q"], {"sft": ["a"], "dpo": ["b <b>"]})),
    ])
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "0.912" in page and "p &amp; q" in page and "b &lt;b&gt;" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched from the network
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_trailing_mean_hand_derived():
    from rlhfkit.world.report import smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0, 4.0], window=10) == [2.0, 3.0]


def _policy(wr):
    return {"policy": "x", "gold_winrate_vs_sft": wr, "gold_winrate_ci_low": wr - 0.03, "gold_winrate_ci_high": wr + 0.03,
            "kl_to_baseline": 1.0, "gold_reward": 1.0, "length_words": 10.0}


def test_each_policy_is_reported_from_its_best_round_on_validation_never_on_held_out():
    from rlhfkit.demo import headline
    from rlhfkit.world.report import final_eval

    sft = {"policy": "sft", "gold_reward": 0.1, "length_words": 9.0, "degenerate": 0.1}
    summaries = {
        "eval": {"sft": sft, "dpo": _policy(0.70), "ppo": _policy(0.66)},
        "val": {"sft": sft, "dpo": _policy(0.75), "ppo": _policy(0.60)},
        "round1/eval": {"sft": sft, "dpo": _policy(0.90), "ppo": _policy(0.62)},  # held-out: never looked at
        "round1/val": {"sft": sft, "dpo": _policy(0.71), "ppo": _policy(0.64)},
        "round2/eval": {"sft": sft, "dpo": _policy(0.50), "ppo": _policy(0.61)},
        "round2/val": {"sft": sft, "dpo": _policy(0.75), "ppo": _policy(0.64)},  # ties: the earlier round
    }
    how, rows = final_eval(summaries)
    assert how == "round chosen on validation prompts"
    assert (rows["dpo"]["round"], rows["dpo"]["gold_winrate_vs_sft"]) == (0, 0.70)
    assert (rows["ppo"]["round"], rows["ppo"]["gold_winrate_vs_sft"]) == (1, 0.62)
    assert rows["ppo"]["val_winrate_vs_sft"] == 0.64 and rows["sft"] == sft
    head = headline(summaries)
    assert head["dpo"]["gold_winrate_vs_sft"] == 0.70 and head["ppo"]["round"] == 1
    assert head["ppo"]["round_chosen_by"] == "validation win rate"


def test_without_validation_stages_the_last_round_is_reported():
    from rlhfkit.world.report import final_eval

    sft = {"policy": "sft"}
    assert final_eval({"eval": {"sft": sft, "dpo": _policy(0.7)}}) == ("", {"sft": sft, "dpo": _policy(0.7)})
    how, rows = final_eval({"eval": {"sft": sft, "dpo": _policy(0.7)}, "round1/eval": {"sft": sft, "dpo": _policy(0.6)}})
    assert how == "last round" and rows["dpo"]["round"] == 1 and rows["dpo"]["gold_winrate_vs_sft"] == 0.6
    assert final_eval({}) == ("", {})
