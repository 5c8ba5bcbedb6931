"""`rlhfkit lab LEVER` at a reduced size: every sweep runs from the CLI and writes its figure and table.

The effects themselves are measured at full size (docs/lab.md, `rlhfkit lab ...` with defaults); here the
models are too small to show most of them, so the checks are on what each lab produces, on the parts that
do not need a trained model (annotator agreement falls with the flip rate), and on the one lever that
shows at this size: a KL coefficient of 1 holds PPO far closer to SFT than 0 does.
"""

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lab")  # shared by the four labs, as `runs/lab` is


def _lab(pipeline, root, lever, *extra):
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "lab", lever, "--pipeline", str(pipeline),
                           "--output_dir", str(root), *extra], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / f"{lever}.png").stat().st_size > 5000
    rows = json.loads((root / f"{lever}.json").read_text())["rows"]
    table = (root / f"{lever}.md").read_text()
    assert table.count("\n") == len(rows) + 2 and table in proc.stdout
    return rows, proc.stdout


def test_noise_lab(small_demo_pipeline, lab_root):
    rows, _ = _lab(small_demo_pipeline, lab_root, "noise", "--flip_rates", "0.0", "0.45", "--best_of", "4")
    assert [r["flip_rate"] for r in rows] == [0.0, 0.45]
    assert rows[0]["label_gold_agreement"] > rows[1]["label_gold_agreement"] + 0.15
    for r in rows:  # the reward model is scored on the gold-ordered held-out pairs, not on its noisy labels
        rm = json.loads((lab_root / f"rm_flip{r['flip_rate']:g}" / "summary.json").read_text())
        gold_pairs = (lab_root / f"labels_flip{r['flip_rate']:g}" / "eval_gold.jsonl").read_text().splitlines()
        assert r["rm_gold_accuracy"] == rm["eval_accuracy"] and rm["eval_pairs"] == len(gold_pairs), (r, rm)
    assert len({r["gold_reward_best_of_1"] for r in rows}) == 1  # every best-of-N draws the same candidates
    assert {"gold_reward_best_of_4"} <= set(rows[0])


def test_kl_lab(small_demo_pipeline, lab_root):
    # 30 PPO steps: enough for the unpenalised policy to drift (after 2, the small demo's, both runs are
    # still the same: the penalty has had nothing to act on)
    rows, _ = _lab(small_demo_pipeline, lab_root, "kl", "--kl_coefs", "0.0", "1.0", "--kl_steps", "30")
    assert [r["kl_coef"] for r in rows] == [0.0, 1.0]
    for r in rows:
        assert r["proxy_reward_end"] is not None and r["gold_reward_train_end"] is not None
    # the lever: a strong KL penalty holds the policy near SFT, during training and on held-out prompts
    # (measured: 6.30 vs 0.28 nats over the last 6 training steps, 4.26 vs 0.33 on held-out prompts)
    free, held = rows
    assert held["train_kl_end"] < 0.3 * free["train_kl_end"], rows
    assert held["heldout_kl_to_sft"] < 0.3 * free["heldout_kl_to_sft"], rows


def test_coverage_and_knowledge_labs_and_the_index(small_demo_pipeline, lab_root):
    rows, out = _lab(small_demo_pipeline, lab_root, "coverage", "--leave_out", "rude")
    assert [r["category"] for r in rows if r["left_out"]] == ["rude"] and len(rows) == 6
    labels = json.loads((lab_root / "labels_no_rude" / "summary.json").read_text())
    assert labels["excluded_pairs"] > 0
    assert "labels: unchanged, skipped" in out  # stages shared with the earlier labs ran once
    rows, _ = _lab(small_demo_pipeline, lab_root, "knowledge")
    assert [r["policy"] for r in rows] == ["sft", "dpo", "ppo", "dpo_idk"] and rows[0]["asked_in_pairs_correct"] is not None
    evals = json.loads((lab_root / "eval" / "summary.json").read_text())
    evals["dpo_idk"] = json.loads((lab_root / "eval_idk" / "summary.json").read_text())["dpo_idk"]
    idk = json.loads((lab_root / "labels_idk" / "summary.json").read_text())
    plain = json.loads((lab_root / "labels" / "summary.json").read_text())
    assert idk["train_pairs"] == plain["train_pairs"] + idk["idk_pairs"]  # the honesty pairs, on top
    n_gap = len((lab_root / "data" / "prompts_gap.jsonl").read_text().splitlines())
    samples = yaml.safe_load((lab_root / "eval" / "config.yaml").read_text())["samples_per_prompt"]
    for r in rows:  # shares of the policy's own samples on the knowledge-gap probes
        for key in ("gap_correct", "gap_unsure", "gap_wrong"):
            assert r[key] == evals[r["policy"]][key], (r, key)
            count = r[key] * n_gap * samples
            assert abs(count - round(count)) < 1e-6, (r, key, n_gap, samples)
    page = (lab_root / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "rlhfkit lab knowledge" in page


def test_active_lab(small_demo_pipeline, lab_root):
    """Both arms spend exactly each budget on distinct pairs; the active arm's random share is what was
    asked; the labels-needed figure and its ratio follow from the curves it reports."""
    from rlhfkit.active import labels_to_reach

    rows, out = _lab(small_demo_pipeline, lab_root, "active", "--active_budget", "24", "--active_step", "8",
                     "--active_ensemble", "2", "--active_repeats", "2")
    assert [r["labels"] for r in rows] == [8, 16, 24]
    res = json.loads((lab_root / "active_curves.json").read_text())
    assert len(res["checks"]) == 4  # 2 arms x 2 repeats
    for c in res["checks"]:
        assert c["labelled"] == c["unique"] == 24, c
        # active: the first batch of 8 is random, then round(0.25 * 8) = 2 of each later batch
        assert c["random_picks"] == (24 if c["arm"] == "random" else 8 + 2 + 2), c
    for arm in ("random", "active"):
        per = res["per_repeat"][arm]
        assert [r[f"{arm}_accuracy"] for r in rows] == pytest.approx([(a + b) / 2 for a, b in zip(*per)])
    assert res["target"] == rows[-1]["random_accuracy"]
    needed = labels_to_reach(res["budgets"], res["accuracy"]["active"], res["target"])
    assert res["active_labels_needed"] == needed and res["ratio"] == (needed / 24 if needed else None)
    assert "with 24 labels" in res["note"]
    assert json.loads((lab_root / "active.json").read_text())["note"] in out


def test_unknown_lever_is_a_clear_error(small_demo_pipeline, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "lab", "vibes", "--pipeline", str(small_demo_pipeline),
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "noise, kl, coverage, knowledge, active" in proc.stderr
