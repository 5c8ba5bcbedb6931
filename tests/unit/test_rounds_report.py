"""The report's per-round section: rows found by stage kind in <root>/round<r>/, figure and table."""

import json

from rlhfkit.world import rounds_report


def marker(folder, stage, summary):
    folder.mkdir(parents=True)
    (folder / ".rlhfkit-stage.json").write_text(json.dumps({"stage": stage, "summary": summary, "run_id": "x"}))


def test_round_rows_by_stage_kind_in_round_order(tmp_path):
    for r, acc, wr in ((1, 0.6, 0.55), (2, 0.7, 0.65), (10, 0.8, 0.75)):
        marker(tmp_path / f"round{r}" / "the_rm", "rm", {"eval_accuracy": acc, "eval_accuracy_ci": [acc - 0.1, acc + 0.1],
                                                         "eval_pairs": 50})
        marker(tmp_path / f"round{r}" / "people", "collect", {"train_pairs": 40, "agreement": {"krippendorff_alpha": 0.4}})
        marker(tmp_path / f"round{r}" / "ev", "gold-eval", {"sft": {"policy": "sft"}, "policy": {
            "gold_winrate_vs_sft": wr, "gold_winrate_ci_low": wr - 0.05, "gold_winrate_ci_high": wr + 0.05,
            "kl_to_baseline": r / 10}})
    marker(tmp_path / "rounds_extra" / "x", "rm", {"eval_accuracy": 0.1})  # not a round folder
    rows = rounds_report.round_rows(tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 10]
    assert [r["rm_accuracy_fresh"] for r in rows] == [0.6, 0.7, 0.8]
    assert [r["gold_winrate_vs_sft"] for r in rows] == [0.55, 0.65, 0.75]
    assert rows[1]["kl_to_sft"] == 0.2 and rows[1]["krippendorff_alpha"] == 0.4 and rows[1]["rm_ci_low"] == 0.6
    title, html = rounds_report.section(tmp_path)
    assert title == "Iterated rounds" and html.count("data:image/png;base64,") == 1 and html.count("<tr>") == 4
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_rounds_no_section(tmp_path):
    marker(tmp_path / "rm", "rm", {"eval_accuracy": 0.7})
    assert rounds_report.section(tmp_path) is None


def test_stages_before_the_rounds_are_round_0_and_every_policy_gets_a_row(tmp_path):
    def policy(wr):
        return {"gold_winrate_vs_sft": wr, "gold_winrate_ci_low": wr - 0.05, "gold_winrate_ci_high": wr + 0.05,
                "kl_to_baseline": 1.0}
    marker(tmp_path / "rm", "rm", {"eval_accuracy": 0.7, "eval_accuracy_ci": [0.6, 0.8]})
    marker(tmp_path / "eval", "gold-eval", {"sft": {"policy": "sft"}, "dpo": policy(0.7), "ppo": policy(0.65)})
    marker(tmp_path / "round1" / "rm", "rm", {"eval_accuracy": 0.72, "eval_accuracy_ci": [0.62, 0.82]})
    marker(tmp_path / "round1" / "eval", "gold-eval", {"sft": {"policy": "sft"}, "dpo": policy(0.8), "ppo": policy(0.75)})
    rows = rounds_report.round_rows(tmp_path)
    assert [(r["round"], r["policy"], r["gold_winrate_vs_sft"]) for r in rows] == [
        (0, "dpo", 0.7), (0, "ppo", 0.65), (1, "dpo", 0.8), (1, "ppo", 0.75)]
    assert [r["rm_accuracy_fresh"] for r in rows] == [0.7, 0.7, 0.72, 0.72]
    title, html = rounds_report.section(tmp_path)
    assert html.count("<tr>") == 5


def test_stages_without_round_folders_are_not_a_round(tmp_path):
    marker(tmp_path / "eval", "gold-eval", {"sft": {"policy": "sft"}, "dpo": {"gold_winrate_vs_sft": 0.7}})
    assert rounds_report.round_rows(tmp_path) == []
