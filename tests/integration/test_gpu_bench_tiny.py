"""benchmarks/gpu_vs_trl.py --tiny end to end on the CPU: every (stage, side) process runs and reports.

The GPU run is done by hand (benchmarks/gpu_run.sh); this keeps its script working between those runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_reports_six_rows(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_vs_trl.py"), "--tiny", "--out", str(out),
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    rows = {(r["stage"], r["side"]): r for r in got["rows"]}
    assert sorted(rows) == sorted((st, si) for st in ("sft", "dpo", "grpo") for si in ("rlhfkit", "trl"))
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("error"))
        assert row["tokens_per_s"] > 0 and row["seconds"] > 0, (key, row)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])
        assert row["peak_gpu_gib"] is None and row["mfu"] is None  # the CPU has neither
    # One word = one token; a prompt gets <bos>, a response <eos>. One pass: 2 steps x 4 rows for SFT
    # and DPO, 2 steps x 2 prompts x 4 completions of 8 new tokens for GRPO.
    def words(name):
        return [{k: len(v.split()) for k, v in json.loads(line).items()}
                for line in (tmp_path / "work" / f"{name}.jsonl").read_text().splitlines()]

    sft, pairs, prompts = words("sft"), words("pairs"), words("prompts")
    assert (len(sft), len(pairs), len(prompts)) == (8, 8, 4)
    assert got["meta"]["tokens"] == {
        "sft": sum(r["prompt"] + 1 + r["completion"] + 1 for r in sft),
        "dpo": sum(2 * (r["prompt"] + 1) + r["chosen"] + 1 + r["rejected"] + 1 for r in pairs),
        "grpo": sum(4 * (r["prompt"] + 1 + 8) for r in prompts)}
    table = (out / "results.md").read_text()
    assert table.count("| sft |") == 3 and "x** |" in table  # two rows and the ratio row


@pytest.mark.slow
def test_checkpointing_benchmark_tiny_on_and_off_train_alike(tmp_path):
    """benchmarks/checkpointing.py --tiny: SFT and DPO through the recipes with gradient checkpointing
    off and on; in fp32 on the CPU the final losses agree to 1e-6 (bf16 on a GPU only to rounding)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "checkpointing.py"), "--tiny", "--out",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "checkpointing.json").read_text())
    assert [(r["stage"], r["checkpointing"]) for r in rows] == [("sft", False), ("sft", True), ("dpo", False),
                                                                ("dpo", True)]
    for off, on in zip(rows[0::2], rows[1::2]):
        assert on["loss"] == pytest.approx(off["loss"], abs=1e-6) and off["peak_mib"] > 0
