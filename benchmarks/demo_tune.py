"""Choose the demo's DPO beta and PPO kl_coef on the validation prompts (issue #22), never on the
held-out evaluation prompts.

Builds a pipeline from the built-in demo (rlhfkit/configs/demo.yaml): its stages up to and including
``rm`` unchanged (so a run in the output folder of a demo skips them), then one DPO stage per beta
(``tune/dpo_beta<b>``) and one PPO stage per KL coefficient (``tune/ppo_kl<k>``), each otherwise the
demo's own ``dpo`` / ``ppo`` settings as the YAML has them, then ONE gold evaluation
(``tune/eval_val``) on ``{data}/prompts_val.jsonl`` (subjects in neither the training nor the
held-out prompts) with every variant as a policy, SFT as the baseline and the demo eval's
sampling settings. The demo's ``rounds`` are not run: round 1 continues DPO / PPO with the same
beta / kl_coef, so it reuses the values chosen here.

Rule for the pick, per method (Breiman's one-standard-error rule, with the 95% interval): among the
variants whose degenerate-output share is at most SFT's + 0.02 (a variant that wins by writing
empty, over-long or repetitive answers is not a candidate), take the best validation gold win rate
over SFT; every candidate whose win rate reaches that variant's interval low is as good as the
validation prompts can tell, and of those the one with the lowest KL to SFT is picked (the most
conservative setting the data cannot tell apart from the best); none when no variant qualifies.
The validation prompts hold few subjects (one or two per category), so their win rate is noisy:
the plain best win rate picked the grids' extreme values (beta 0.1, kl_coef 0.05, KL 4.5 and 1.8),
which did worse on the held-out prompts than the defaults (benchmarks/RESULTS.md).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_tune.py --output_dir runs/tune \\
        --json /tmp/tune.json --record
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import cpu_model  # noqa: E402

DEGENERATE_MARGIN = 0.02
EVAL_NAME = "tune/eval_val"


def _stage(stages: list[dict], name: str) -> dict:
    for st in stages:
        if st["name"] == name:
            return st
    raise SystemExit(f"demo pipeline: no stage named {name!r}")


def variant_names(betas: list[float], kls: list[float]) -> dict[str, tuple[str, float]]:
    """{stage name: (method, value)} for every variant, DPO first."""
    return {**{f"tune/dpo_beta{b:g}": ("dpo", b) for b in betas}, **{f"tune/ppo_kl{k:g}": ("ppo", k) for k in kls}}


def tune_pipeline(spec: dict, betas: list[float], kls: list[float]) -> dict:
    """The tuning pipeline from the demo pipeline ``spec`` (as loaded from YAML): the demo's stages up to
    ``rm`` as they are, one dpo / ppo stage per value, one gold-eval on the validation prompts."""
    stages = spec["stages"]
    names = [st["name"] for st in stages]
    shared = copy.deepcopy(stages[:names.index("rm") + 1])
    dpo, ppo, ev = (_stage(stages, n) for n in ("dpo", "ppo", "eval"))
    tuned = []
    for name, (method, value) in variant_names(betas, kls).items():
        base = dpo if method == "dpo" else ppo
        key = "beta" if method == "dpo" else "kl_coef"
        tuned.append({"name": name, "stage": base["stage"], "with": {**copy.deepcopy(base["with"]), key: value}})
    keep = {k: v for k, v in ev["with"].items() if k not in ("data", "policies", "reward_model", "gap_data")}
    evaluation = {"name": EVAL_NAME, "stage": ev["stage"],
                  "with": {**copy.deepcopy(keep), "data": "{data}/prompts_val.jsonl",
                           "policies": [f"{n.split('/', 1)[1]}={{{n}}}" for n in variant_names(betas, kls)]}}
    out = {k: copy.deepcopy(v) for k, v in spec.items() if k not in ("stages", "rounds", "round")}
    out["stages"] = shared + tuned + [evaluation]
    return out


def pick(rows: list[dict], sft_degenerate: float, margin: float = DEGENERATE_MARGIN) -> dict[str, dict | None]:
    """Per method, among the rows with degenerate <= SFT's + margin: of those whose win rate reaches
    the best row's 95% interval low, the one with the lowest KL (the module docstring's rule)."""
    picks = {}
    for method in sorted({r["method"] for r in rows}):
        ok = [r for r in rows if r["method"] == method and r["degenerate"] <= sft_degenerate + margin + 1e-12]
        if not ok:
            picks[method] = None
            continue
        best = max(ok, key=lambda r: r["winrate"])
        picks[method] = min((r for r in ok if r["winrate"] >= best["ci_low"]), key=lambda r: r["kl"])
    return picks


def result_rows(evals: dict, betas: list[float], kls: list[float]) -> list[dict]:
    """One row per variant from the gold-eval summary ({policy: row})."""
    rows = []
    for name, (method, value) in variant_names(betas, kls).items():
        r = evals[name.split("/", 1)[1]]
        rows.append({"variant": name, "method": method, "value": value, "winrate": r["gold_winrate_vs_sft"],
                     "ci_low": r["gold_winrate_ci_low"], "ci_high": r["gold_winrate_ci_high"],
                     "kl": r["kl_to_baseline"], "degenerate": r["degenerate"], "gold_reward": r["gold_reward"]})
    return rows


def table(rows: list[dict], sft: dict) -> str:
    lines = [f"| variant | val gold win rate vs SFT [95% CI] | KL to SFT | degenerate (SFT {sft['degenerate']:.3f}) "
             "| gold reward |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['winrate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['kl']:.2f} | {r['degenerate']:.3f} | {r['gold_reward']:.3f} |")
    lines.append(f"| sft | 0.500 | 0 | {sft['degenerate']:.3f} | {sft['gold_reward']:.3f} |")
    return "\n".join(lines)


def pick_lines(picks: dict[str, dict | None], sft_degenerate: float) -> list[str]:
    key = {"dpo": "beta", "ppo": "kl_coef"}
    return [f"pick {m}: " + (f"{key[m]} = {p['value']:g} ({p['variant']}, win rate {p['winrate']:.3f})" if p else
                             f"none (every variant's degenerate share is above SFT's {sft_degenerate:.3f} + "
                             f"{DEGENERATE_MARGIN})") for m, p in picks.items()]


def stage_seconds(root: Path, spec: dict) -> dict[str, float]:
    """Each stage's own run time, from its completion marker (the run that made it, not a skip)."""
    from rlhfkit.pipeline import MARKER

    return {st["name"]: json.loads((root / st["name"] / MARKER).read_text())["seconds"] for st in spec["stages"]}


def record(path: Path, command: str, text: str, picks: list[str], seconds: float) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## Demo hyperparameters chosen on the validation prompts (`benchmarks/demo_tune.py`, issue #22)\n\n"
               f"### {when}, {os.cpu_count()}-core machine ({cpu_model()}), threads={threads}\n\n"
               f"Command: `{command}` (stages {seconds / 60:.1f} min in all, on a machine shared with other jobs; the figures "
               f"depend on the seeds and the thread count, not on the load). Win rate, KL and degenerate share "
               f"from one gold evaluation on `prompts_val.jsonl`; pick: among variants whose degenerate share is at "
               f"most SFT's + {DEGENERATE_MARGIN}, the lowest KL of those whose win rate reaches the best one's 95% "
               f"interval low.\n\n{text}\n\n"
               + "\n".join(f"- {p}" for p in picks) + "\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(section)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dpo_beta", default="0.1,0.25,0.5,1.0", help="DPO betas, comma-separated.")
    ap.add_argument("--ppo_kl", default="0.05,0.1,0.2", help="PPO kl_coef values, comma-separated.")
    ap.add_argument("--output_dir", default="runs/tune")
    ap.add_argument("--pipeline", default="", help="Demo pipeline YAML (default: the built-in demo.yaml).")
    ap.add_argument("--json", default="", help="Write the rows and picks here.")
    ap.add_argument("--record", action="store_true", help="Append a dated section to benchmarks/RESULTS.md.")
    args = ap.parse_args()
    from rlhfkit.demo import builtin_config
    from rlhfkit.pipeline import run_pipeline

    betas, kls = _floats(args.dpo_beta), _floats(args.ppo_kl)
    spec = yaml.safe_load(Path(args.pipeline or builtin_config()).read_text())
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tune_pipeline.yaml"
    tuned = tune_pipeline(spec, betas, kls)
    path.write_text(yaml.safe_dump(tuned, sort_keys=False))
    evals = run_pipeline(path, str(out))[EVAL_NAME]
    seconds = sum(stage_seconds(out, tuned).values())
    rows, sft = result_rows(evals, betas, kls), evals["sft"]
    picks = pick(rows, sft["degenerate"])
    text, lines = table(rows, sft), pick_lines(picks, sft["degenerate"])
    print(text + "\n" + "\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "sft": {k: sft[k] for k in ("degenerate", "gold_reward")},
                                               "picks": {m: p and p["variant"] for m, p in picks.items()},
                                               "threads": os.environ.get("OMP_NUM_THREADS"),
                                               "stage_seconds": stage_seconds(out, tuned)},
                                              indent=2))
    if args.record:
        command = "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(["benchmarks/demo_tune.py", *sys.argv[1:]])
        record(Path(__file__).resolve().parent / "RESULTS.md", command, text, lines, seconds)


if __name__ == "__main__":
    main()
