"""`rlhfkit demo` end to end with short stages (the full-length run is `make demo`)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_cli_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--output_dir", str(out), "--sft_steps", "20",
                           "--rm_steps", "4", "--dpo_steps", "4", "--samples_per_prompt", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reward model accuracy" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["kind_rate_sft"] <= 1.0 and 0.0 <= summary["kind_rate_dpo"] <= 1.0
    assert len(summary["rm_eval_accuracy_ci"]) == 2
    for stage in ("base", "sft", "rm", "dpo"):
        assert (out / stage / "model.safetensors").exists(), stage
    for name in ("sft.jsonl", "prefs.jsonl", "prefs_eval.jsonl", "prompts.jsonl"):
        assert (out / "data" / name).stat().st_size > 0
