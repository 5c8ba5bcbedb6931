"""The demo's report: what each stage did to the policy, judged by the world's gold preference."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import report
from . import rounds_report


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _rounds_of(summaries: dict, stage: str) -> dict[int, dict]:
    """Round -> summary of the stage named ``stage`` in that round (round 0: the stages before
    ``rounds``; round r: ``round<r>/<stage>``)."""
    out = {0: summaries[stage]} if stage in summaries else {}
    for key, summary in summaries.items():
        if m := re.fullmatch(rf"round(\d+)/{re.escape(stage)}", key):
            out[int(m.group(1))] = summary
    return out


def final_eval(summaries: dict) -> tuple[str, dict]:
    """The held-out rows to report, per policy from one round: the round whose policy scored the
    highest gold win rate on the validation prompts (stages ``val``), the earliest on a tie, so the
    number of rounds is chosen like any other hyperparameter, never on the held-out prompts. With no
    validation stages, the last round's. Returns (a description of the choice, {policy: row});
    each chosen row carries its ``round``."""
    evals, vals = _rounds_of(summaries, "eval"), _rounds_of(summaries, "val")
    if not evals:
        return "", {}
    last = max(evals)
    if len(evals) == 1 and not vals:  # no rounds: nothing to choose
        return "", evals[last]
    chosen = {}
    for name, row in evals[last].items():
        rounds = [r for r in sorted(evals) if name in evals[r] and name in vals.get(r, {})]
        if name == "sft":  # the baseline: the same samples in every round
            chosen[name] = row
        elif not rounds:
            chosen[name] = {**row, "round": last, "round_chosen_by": "last round"}
        else:
            best = max(rounds, key=lambda r: (vals[r][name].get("gold_winrate_vs_sft") or 0.0, -r))
            chosen[name] = {**evals[best][name], "round": best, "round_chosen_by": "validation win rate",
                            "val_winrate_vs_sft": vals[best][name].get("gold_winrate_vs_sft")}
    return ("round chosen on validation prompts" if vals else "last round"), chosen


def _policy_sections(eval_name: str, evals: dict) -> list[tuple[str, str]]:
    """The policies' held-out table (``final_eval``'s rows), their gold reward per category and their
    degenerate outputs."""
    sections: list[tuple[str, str]] = []
    if evals:
        cols = ["policy"] + (["round"] if eval_name else []) + [
            "gold_reward", "gold_winrate_vs_sft", "gold_winrate_ci_low", "gold_winrate_ci_high", "kl_to_baseline",
            "length_words", "degenerate", "gap_correct", "gap_wrong", "gap_unsure"]
        when = f" ({eval_name})" if eval_name else ""
        sections.append((f"Policies on held-out prompts (gold preference){when}", report.table(list(evals.values()), cols) +
                         "<p class=note>Win rate: share of held-out samples the gold preference scores above "
                         "the SFT sample for the same prompt (ties count half), with a 95% bootstrap interval. "
                         "KL: sequence-level KL(policy || SFT) estimated from the policy's samples, in nats. "
                         "Degenerate: share of samples that are empty, over-long (over 35 words), padded with "
                         "filler words or repeat a content word 3+ times (per kind below). "
                         "Knowledge gap: shares of samples on questions whose answer pretraining never "
                         "taught that state the right answer, a wrong one (confidently wrong) or none while "
                         "saying it does not know; RLHF changes tone, not what pretraining never taught.</p>"))
        cats = sorted(k for k in next(iter(evals.values())) if k.startswith("gold/"))
        sections.append(("Gold reward per prompt category",
                         report.table([{"policy": r["policy"], **{c[5:]: r[c] for c in cats}} for r in evals.values()])))
        kinds = [k for k in next(iter(evals.values())) if k.startswith("degenerate/")]
        if kinds:
            sections.append(("Degenerate outputs (share of held-out samples)",
                             report.table([{"policy": r["policy"], **{k[11:]: r.get(k) for k in kinds}}
                                           for r in evals.values()])))
    return sections


def build(root: str | Path, summaries: dict) -> Path:
    """``runs/demo/report.html`` from the pipeline's stage folders and summaries."""
    root, (eval_name, evals) = Path(root), final_eval(summaries)
    sections = _policy_sections(eval_name, evals)
    rm, labels = summaries.get("rm", {}), summaries.get("labels", {})
    if rm:
        sections.append(("Reward model", report.table([{
            "held-out accuracy (annotator labels)": rm.get("eval_accuracy"),
            "95% CI": rm.get("eval_accuracy_ci"),
            "noise ceiling": labels.get("ceiling_accuracy"),
            "held-out pairs": rm.get("eval_pairs")}]) +
            "<p class=note>The ceiling is the expected accuracy, against these noisy annotators, of a "
            "predictor that knows the gold preference: no reward model can beat it on average.</p>"))
    runs = {n: root / n / "metrics.jsonl" for n in ("sft", "rm", "dpo", "ppo") if (root / n / "metrics.jsonl").exists()}
    if runs:
        sections.append(("Training curves", "".join(
            report.curves({n: p}, keys) for n, p in runs.items()
            for keys in [{"sft": ["loss"], "rm": ["loss", "accuracy"], "dpo": ["loss", "reward_accuracy", "logratio"],
                          "ppo": ["reward", "kl", "kl_k3"]}[n]]) +
            "<p class=note>Per training step. DPO's log-ratio is log π − log π_ref per token of the preference "
            "data's chosen and rejected responses: not a KL (those responses are not the policy's samples), so "
            "it goes negative as DPO lowers the rejected ones. PPO's KL is estimated on its own samples, summed "
            "over the tokens of a response (k3: Schulman's non-negative estimator).</p>"))
    frontier = root / "eval" / "frontier.json"
    if evals and frontier.exists():
        sections.append(("Reward vs KL", reward_vs_kl(json.loads(frontier.read_text()), evals, root) +
                         "<p class=note>Left: the hidden gold reward; right: the reward model's score (the proxy "
                         "the policies optimise). Best-of-N: the SFT policy's best of N samples by the reward "
                         "model, at its closed-form KL log N - (N-1)/N. Policies: held-out prompts, KL estimated "
                         "from samples. Dashed: each PPO run during training (its rollouts on training prompts), "
                         "one line per KL coefficient. Where the proxy keeps rising but the gold reward stops or "
                         "falls, the policy is exploiting the reward model.</p>"))
    monitor = overoptimisation(root)
    if monitor:
        sections.append(("Over-optimisation monitor", monitor +
                         "<p class=note>The training reward (the reward model PPO optimises) and the held-out reward "
                         "(the hidden gold preference, scored on the same samples and never optimised), 10-step "
                         "means. Shaded: steps where the training reward's last-10-step mean rose by more than 2 "
                         "standard errors while the held-out one fell by more than 2 (the warning the trainer "
                         "prints).</p>"))
    coverage = root / "coverage" / "coverage.png"
    if coverage.exists():
        cov = summaries.get("coverage", {})
        sections.append(("Coverage of the held-out prompts by the preference data", report.png(coverage.read_bytes()) +
                         report.table([{k: r[k] for k in ("cluster", "eval_prompts", "pairs_near",
                                                          "nearest_pair_similarity", "covered")}
                                       for r in cov.get("cluster_table", [])]) +
                         "<p class=note>Held-out prompts (and knowledge-gap probes) embedded with MiniLM and "
                         "clustered; a cluster is uncovered when fewer than "
                         f"{cov.get('min_pairs', '?')} training preference pairs are near it.</p>"))
    rounds = rounds_report.section(root)
    if rounds:
        sections.append(rounds)
    samples_path = root / "eval" / "samples.jsonl"
    if samples_path.exists():
        rows = [json.loads(x) for x in samples_path.read_text().splitlines()]
        seen, picked = set(), []
        for r in rows:  # one sample per category, the first of each
            if r["category"] not in seen:
                seen.add(r["category"])
                picked.append(r)
        names = [k for k in rows[0] if k not in ("prompt", "category")]
        sections.append(("Samples for the same prompts", report.side_by_side(
            [r["prompt"] for r in picked], {n: [r[n] for r in picked] for n in names})))
    return report.write(root / "report.html", "rlhfkit demo report", sections)


GOLD_KEY, HELDOUT_KEY, PROXY_KEY = "reward/rlhfkit.world.gold:gold_reward", "heldout_reward", "reward"


def _ppo_runs(root: Path) -> dict[str, list[dict]]:
    """Every stage folder whose metrics log the gold reward beside the proxy (PPO runs with the
    gold reward as held-out monitor, or as a weight-0 source), keyed by a label naming its KL
    coefficient; each row gets the gold value under GOLD_KEY."""
    runs = {}
    for metrics in sorted(root.glob("*/metrics.jsonl")):
        rows = [{GOLD_KEY: r.get(GOLD_KEY, r.get(HELDOUT_KEY)), **r} for r in report.read_metrics(metrics)
                if (GOLD_KEY in r or HELDOUT_KEY in r) and "kl" in r]
        if rows:
            runs[f"{metrics.parent.name} (kl_coef {rows[0].get('kl_coef', float('nan')):g})"] = rows
    return runs


def overoptimisation(root: Path) -> str:
    """Per online run with a held-out reward: training and held-out reward by step (10-step means),
    steps where the divergence test fired shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {m.parent.name: [r for r in report.read_metrics(m) if HELDOUT_KEY in r]
            for m in sorted(root.glob("*/metrics.jsonl"))}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return ""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs.items()):
        steps = [r["step"] for r in rows]
        ax.plot(steps, smooth([r[PROXY_KEY] for r in rows]), color="tab:blue", label="training reward (reward model)")
        twin = ax.twinx()
        twin.plot(steps, smooth([r[HELDOUT_KEY] for r in rows]), color="tab:orange", label="held-out reward (gold)")
        for r in rows:
            if r.get("overopt_warning"):
                ax.axvspan(r["step"] - 0.5, r["step"] + 0.5, color="red", alpha=0.15, lw=0)
        ax.set(xlabel="step", ylabel="training reward", title=f"{name}: {sum(r.get('overopt_warning', 0) for r in rows)} "
                                                              "steps flagged")
        twin.set_ylabel("held-out reward")
        ax.legend(handles=ax.get_lines() + twin.get_lines(), fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    return report.figure(fig)


def smooth(values: list[float], window: int = 10) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what exists)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def reward_vs_kl(frontier: list[dict], evals: dict, root: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    policies = [r for r in evals.values() if r["policy"] != "sft"]
    for ax, key, title in ((axes[0], "gold_reward", "gold reward"), (axes[1], "proxy_reward", "reward-model score")):
        ax.plot([f["kl"] for f in frontier], [f[key] for f in frontier], "o-", color="black", label="best-of-N (SFT)")
        for f in frontier:
            ax.annotate(f"N={f['n']}", (f["kl"], f[key]), fontsize=7, xytext=(3, -9), textcoords="offset points")
        for name, rows in _ppo_runs(root).items():
            ax.plot(smooth([r["kl"] for r in rows]), smooth([r[GOLD_KEY if key == "gold_reward" else PROXY_KEY]
                                                               for r in rows]),
                    "--", alpha=0.8, label=f"{name}, training (10-step mean)")
        ax.set(xlabel="KL to SFT (nats)", ylabel=title, title=f"{title.capitalize()} vs KL")
        ax.grid(alpha=0.3)
    for r in policies:
        axes[0].scatter([r["kl_to_baseline"]], [r["gold_reward"]], s=60, marker="*", zorder=3, label=r["policy"])
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    return report.figure(fig)
