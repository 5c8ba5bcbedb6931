"""``rlhfkit demo``: the whole RLHF loop on the built-in world, on a laptop CPU, in minutes.

It is one configuration of ``rlhfkit pipeline`` (``rlhfkit/configs/demo.yaml``): a base model
pretrained on mixed-quality text -> SFT on mixed demonstrations -> pairs sampled from the SFT
policy -> simulated annotators (Bradley-Terry on a hidden gold preference, with label noise) ->
reward model -> DPO and PPO -> held-out evaluation by the gold preference -> ``report.html``.
Stages whose output exists and whose config is unchanged are skipped on a rerun.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .config import dump_config
from .pipeline import run_pipeline
from .world import report


@dataclass
class DemoConfig:
    """Run the built-in RLHF pipeline on the demo world and write runs/demo/report.html."""

    output_dir: str = field(default="runs/demo", metadata={"help": "Where every stage's folder, report.html and summary.json go."})
    pipeline: str = field(default="", metadata={"help": "Pipeline YAML to run instead of the built-in rlhfkit/configs/demo.yaml."})
    force: list[str] = field(default_factory=list, metadata={"help": "Stage names to rerun even if unchanged."})


def builtin_config() -> str:
    return str(resources.files("rlhfkit") / "configs" / "demo.yaml")


def headline(summaries: dict) -> dict:
    """The figures summary.json promises: RM accuracy and its noise ceiling, and per policy the
    gold win rate over SFT with its 95% interval and the KL to SFT."""
    rm, labels, (_, evals) = summaries.get("rm", {}), summaries.get("labels", {}), report.final_eval(summaries)
    out = {"rm_eval_accuracy": rm.get("eval_accuracy"), "rm_eval_accuracy_ci": rm.get("eval_accuracy_ci"),
           "rm_accuracy_ceiling": labels.get("ceiling_accuracy")}
    if "coverage" in summaries:
        out["coverage_uncovered_clusters"] = summaries["coverage"].get("uncovered_clusters")
    if "overopt_warning_steps" in summaries.get("ppo", {}):
        out["ppo_overopt_warning_steps"] = summaries["ppo"]["overopt_warning_steps"]
    for name, row in evals.items():
        if name == "sft":
            out["sft"] = {"gold_reward": row["gold_reward"], "length_words": row["length_words"],
                          "degenerate": row.get("degenerate")}
            continue
        chosen = {k: row[k] for k in ("round", "round_chosen_by", "val_winrate_vs_sft") if k in row}
        out[name] = {**chosen, "gold_winrate_vs_sft": row["gold_winrate_vs_sft"], "gold_winrate_ci_low": row["gold_winrate_ci_low"],
                     "gold_winrate_ci_high": row["gold_winrate_ci_high"], "kl": row["kl_to_baseline"],
                     "gold_reward": row["gold_reward"], "length_words": row["length_words"],
                     "degenerate": row.get("degenerate"), "gap_correct": row.get("gap_correct")}
    return out


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.output_dir)
    summaries = run_pipeline(cfg.pipeline or builtin_config(), str(out), tuple(cfg.force))
    page = report.build(out, summaries)
    summary = {**headline(summaries), "report": str(page)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    lines = ["", "rlhfkit demo: held-out prompts, judged by the world's hidden gold preference"]
    if summary["rm_eval_accuracy"] is not None:
        lo, hi = summary["rm_eval_accuracy_ci"]
        lines.append(f"  reward model accuracy   {summary['rm_eval_accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}); "
                     f"noise ceiling {summary['rm_accuracy_ceiling']:.3f}")
    for name in [k for k in summary if isinstance(summary[k], dict) and "gold_winrate_vs_sft" in summary[k]]:
        r = summary[name]
        lines.append(f"  {name:<4} win rate vs SFT   {r['gold_winrate_vs_sft']:.3f} (95% CI {r['gold_winrate_ci_low']:.3f}-"
                     f"{r['gold_winrate_ci_high']:.3f}); KL to SFT {r['kl']:.2f} nats"
                     + (f"; round {r['round']} ({r['round_chosen_by']})" if "round" in r else ""))
    lines.append(f"  report                  {page}")
    print("\n".join(lines))
    return summary
