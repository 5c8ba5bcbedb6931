"""`rlhfkit demo` end to end on a reduced copy of the built-in pipeline (the full run is `make demo`)."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from rlhfkit.world.demo import builtin_config

pytestmark = pytest.mark.slow

SHRINK = {"base": {"steps": 30}, "data": {"n_sft": 200, "train_prompts_per_category": 6, "eval_prompts_per_category": 2},
          "sft": {"max_steps": 10}, "pairs": {"k": 4, "max_new_tokens": 16}, "rm": {"max_steps": 4, "eval_steps": 2},
          "dpo": {"max_steps": 4}, "ppo": {"max_steps": 2, "batch_size": 4, "max_new_tokens": 16},
          "eval": {"max_new_tokens": 16}}


def small_pipeline(tmp_path):
    spec = yaml.safe_load(open(builtin_config()))
    for st in spec["stages"]:
        st.setdefault("with", {}).update(SHRINK.get(st["name"], {}))
        if st["stage"] == "world-base":
            st["with"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _demo(tmp_path, out):
    return subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--pipeline", str(small_pipeline(tmp_path)),
                           "--output_dir", str(out)], capture_output=True, text=True, timeout=900)


def test_demo_runs_every_stage_then_skips_them(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "win rate vs SFT" in proc.stdout and "noise ceiling" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0.5 < summary["rm_accuracy_ceiling"] < 1.0 and 0.0 <= summary["rm_eval_accuracy"] <= 1.0
    for policy in ("dpo", "ppo"):
        assert {"gold_winrate_vs_sft", "gold_winrate_ci_low", "kl"} <= set(summary[policy])
        assert summary[policy]["gold_winrate_ci_low"] <= summary[policy]["gold_winrate_vs_sft"]
    for stage in ("base", "sft", "rm", "dpo", "ppo"):
        assert (out / stage / "model.safetensors").exists(), stage
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert not re.search(r"(src|href)=\"https?://", page)
    assert "Samples for the same prompts" in page
    again = _demo(tmp_path, out)
    assert again.returncode == 0
    assert again.stdout.count("unchanged, skipped") == 9  # every stage
