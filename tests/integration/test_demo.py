"""`rlhfkit demo` end to end on a reduced copy of the built-in pipeline (the full run is `make demo`)."""

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _demo(pipeline, out):
    return subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--pipeline", str(pipeline),
                           "--output_dir", str(out)], capture_output=True, text=True, timeout=900)


def test_demo_runs_every_stage_then_skips_them(tmp_path, small_demo_pipeline):
    out = tmp_path / "demo"
    proc = _demo(small_demo_pipeline, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "win rate vs SFT" in proc.stdout and "noise ceiling" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0.5 < summary["rm_accuracy_ceiling"] < 1.0
    # the reward model's figure is its own held-out accuracy: k right of the held-out pairs, printed
    rm = json.loads((out / "rm" / "summary.json").read_text())
    held_out = len((out / "labels" / "eval.jsonl").read_text().splitlines())
    right = summary["rm_eval_accuracy"] * held_out
    assert summary["rm_eval_accuracy"] == rm["eval_accuracy"] and rm["eval_pairs"] == held_out
    assert abs(right - round(right)) < 1e-6, (summary["rm_eval_accuracy"], held_out)
    assert f"reward model accuracy   {summary['rm_eval_accuracy']:.3f}" in proc.stdout
    for policy in ("dpo", "ppo"):
        assert {"gold_winrate_vs_sft", "gold_winrate_ci_low", "kl"} <= set(summary[policy])
        assert summary[policy]["gold_winrate_ci_low"] <= summary[policy]["gold_winrate_vs_sft"]
    for stage in ("base", "sft", "rm", "dpo", "ppo"):
        assert (out / stage / "model.safetensors").exists(), stage
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert not re.search(r"(src|href)=\"https?://", page)
    assert "Samples for the same prompts" in page and "Iterated rounds" in page  # round 0 and round 1
    assert "(validation win rate)" in proc.stdout and summary["dpo"]["round"] in (0, 1)
    assert "Coverage of the held-out prompts" in page and "Over-optimisation monitor" in page
    coverage = json.loads((out / "coverage" / "summary.json").read_text())
    assert summary["coverage_uncovered_clusters"] == [c["cluster"] for c in coverage["cluster_table"]
                                                      if c["pairs_near"] < coverage["min_pairs"]]
    ppo = [json.loads(x) for x in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all("heldout_reward" in r for r in ppo)
    again = _demo(small_demo_pipeline, out)
    assert again.returncode == 0
    from rlhfkit.pipeline import load_pipeline

    assert again.stdout.count("unchanged, skipped") == len(load_pipeline(small_demo_pipeline)["stages"]) == 21  # every one
