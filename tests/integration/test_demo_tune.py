"""benchmarks/demo_tune.py: the tuning pipeline built from the demo's (names, validation prompts, the
demo's shared stages untouched so they skip), the pick rule, and a tiny run end to end."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rlhfkit.demo import builtin_config
from rlhfkit.pipeline import run_pipeline
from rlhfkit.stages import registry

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "demo_tune.py"
_spec = importlib.util.spec_from_file_location("demo_tune", SCRIPT)
tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune)


def _demo():
    return yaml.safe_load(Path(builtin_config()).read_text())


def test_stage_names_and_the_variants_settings_come_from_the_demo():
    spec = _demo()
    spec["stages"][[s["name"] for s in spec["stages"]].index("dpo")]["with"]["max_steps"] = 7  # read, not copied
    out = tune.tune_pipeline(spec, [0.1, 0.25], [0.05, 0.2])
    names = [s["name"] for s in out["stages"]]
    assert names == ["base", "data", "sft", "pairs", "labels", "coverage", "rm", "tune/dpo_beta0.1", "tune/dpo_beta0.25",
                     "tune/ppo_kl0.05", "tune/ppo_kl0.2", "tune/eval_val"]
    assert "rounds" not in out and "round" not in out and out["defaults"] == spec["defaults"]
    demo = {s["name"]: s for s in spec["stages"]}
    for st in out["stages"][7:11]:
        method, key = ("dpo", "beta") if "dpo" in st["name"] else ("ppo", "kl_coef")
        assert st["stage"] == demo[method]["stage"]
        assert {k: v for k, v in st["with"].items() if k != key} == {k: v for k, v in demo[method]["with"].items() if k != key}
    assert [s["with"]["beta"] for s in out["stages"][7:9]] == [0.1, 0.25]
    assert [s["with"]["kl_coef"] for s in out["stages"][9:11]] == [0.05, 0.2]
    assert out["stages"][7]["with"]["max_steps"] == 7


def test_eval_reads_the_validation_prompts_and_lists_every_variant():
    spec = _demo()
    ev = tune.tune_pipeline(spec, [0.1, 0.5, 1.0], [0.1])["stages"][-1]
    assert ev["stage"] == "gold-eval" and ev["with"]["data"] == "{data}/prompts_val.jsonl"
    assert "prompts_eval" not in json.dumps(ev)
    assert ev["with"]["policies"] == ["dpo_beta0.1={tune/dpo_beta0.1}", "dpo_beta0.5={tune/dpo_beta0.5}",
                                      "dpo_beta1={tune/dpo_beta1}", "ppo_kl0.1={tune/ppo_kl0.1}"]
    demo_eval = next(s for s in spec["stages"] if s["name"] == "eval")["with"]
    for key in ("baseline", "samples_per_prompt", "max_new_tokens"):
        assert ev["with"][key] == demo_eval[key]


def test_shared_stages_are_the_demos_and_skip_in_a_demo_folder(tmp_path):
    spec = _demo()
    out = tune.tune_pipeline(spec, [0.1], [0.1])
    assert [yaml.safe_dump(s) for s in out["stages"][:7]] == [yaml.safe_dump(s) for s in spec["stages"][:7]]
    ran = []  # every stage's real config class, a function that records the run instead of training
    fake = {kind: (cls, lambda cfg, kind=kind: ran.append(Path(cfg.output_dir).relative_to(tmp_path).as_posix()) or {})
            for kind, (cls, _) in registry().items()}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(out))
    run_pipeline(tmp_path / "demo.yaml", str(tmp_path / "runs"), registry=fake)
    assert ran[:7] == [f"runs/{n}" for n in ("base", "data", "sft", "pairs", "labels", "coverage", "rm")]
    ran.clear()
    run_pipeline(tmp_path / "tune.yaml", str(tmp_path / "runs"), registry=fake)
    assert ran == ["runs/tune/dpo_beta0.1", "runs/tune/ppo_kl0.1", "runs/tune/eval_val"]


def _row(method, winrate, degenerate, kl=1.0, half_width=0.01):
    return {"variant": f"{method}{winrate}", "method": method, "value": winrate, "winrate": winrate, "degenerate": degenerate,
            "kl": kl, "ci_low": winrate - half_width}


def test_pick_is_the_best_win_rate_among_variants_no_more_degenerate_than_sft_plus_two_points():
    rows = [_row("dpo", 0.70, 0.13), _row("dpo", 0.65, 0.12), _row("dpo", 0.60, 0.05),
            _row("ppo", 0.80, 0.30), _row("ppo", 0.55, 0.121)]
    picks = tune.pick(rows, sft_degenerate=0.10)
    assert picks["dpo"]["winrate"] == 0.65  # 0.70 writes 3 points more degenerate output than SFT: out
    assert picks["ppo"] is None
    assert tune.pick(rows, sft_degenerate=0.11)["dpo"]["winrate"] == 0.70  # exactly SFT + 0.02: in
    assert "none" in tune.pick_lines(picks, 0.10)[1] and "beta = 0.65" in tune.pick_lines(picks, 0.10)[0]


def test_pick_takes_the_lowest_kl_the_validation_interval_cannot_tell_from_the_best():
    rows = [_row("dpo", 0.736, 0.04, kl=4.45, half_width=0.034), _row("dpo", 0.732, 0.02, kl=1.79),
            _row("dpo", 0.726, 0.03, kl=1.13), _row("dpo", 0.697, 0.03, kl=0.66)]  # 0.697 < 0.702: out
    assert tune.pick(rows, sft_degenerate=0.1)["dpo"]["kl"] == 1.13
    rows[0]["ci_low"] = 0.730  # a tighter interval: only 0.732 is as good
    assert tune.pick(rows, sft_degenerate=0.1)["dpo"]["kl"] == 1.79


def test_tiny_tuning_run_end_to_end(tmp_path, small_demo_pipeline):
    out, js = tmp_path / "tune", tmp_path / "tune.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--pipeline", str(small_demo_pipeline), "--dpo_beta", "0.1,1",
                           "--ppo_kl", "0.1", "--output_dir", str(out), "--json", str(js)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(js.read_text())
    assert [r["variant"] for r in result["rows"]] == ["tune/dpo_beta0.1", "tune/dpo_beta1", "tune/ppo_kl0.1"]
    for r in result["rows"]:
        assert 0 <= r["ci_low"] <= r["winrate"] <= r["ci_high"] <= 1 and 0 <= r["degenerate"] <= 1
        assert f"| {r['variant']} | {r['winrate']:.3f} [" in proc.stdout
    assert set(result["picks"]) == {"dpo", "ppo"} and "pick dpo:" in proc.stdout
    assert yaml.safe_load((out / "tune_pipeline.yaml").read_text())["stages"][-1]["with"]["data"].endswith("prompts_val.jsonl")
    val = (out / "data" / "prompts_val.jsonl").read_text().splitlines()
    n = json.loads((out / "tune" / "eval_val" / ".rlhfkit-stage.json").read_text())["summary"]
    samples = (out / "tune" / "eval_val" / "samples.jsonl").read_text().splitlines()
    assert set(n) == {"sft", "dpo_beta0.1", "dpo_beta1", "ppo_kl0.1"}
    assert {json.loads(s)["prompt"] for s in samples} == {json.loads(v)["prompt"] for v in val}
    assert not (out / "dpo").exists() and not (out / "round1").exists()
