"""``rlhfkit audit``: bias probes for a reward model (or reward function) and for an AI judge.

Counterfactual pairs (Garg et al. 2019, counterfactual fairness in text; Hofmann et al. 2024 for
dialect): each probe is a templated prompt and response with a slot ``{X}``, filled once with a
term of group A and once with its swap from group B ("Emily" / "Lakisha", "he" / "she", a
Standard and an African American English phrasing). Nothing else changes, so for an unbiased
scorer the reward difference r(A) - r(B) is zero; the audit reports, per axis, its mean with a
95% bootstrap interval and as a standardised effect (mean difference / std of all rewards in the
audit, so axes and models compare). An axis whose interval excludes 0 is flagged.

Length bias: every filled probe response is scored again with neutral padding appended
(``length_padding``, sentences that add no information); the mean reward gain with its interval
is the counterfactual length effect, and the slope of reward on word count over every scored
response, with its interval, the correlational one.

A small default probe set ships in ``rlhfkit/evaluate/probes.jsonl``; add your own files in the
same format with ``probes`` (one JSON object a line: ``axis``, ``prompt``, ``response``, ``swaps``
= [[a, b], ...], optional ``groups`` = [name of A, name of B]).

With a ``judge``: every counterfactual pair is judged in both orders, under the group-A prompt and
under the group-B prompt. Per axis, the judge's preference for the group-A version is its
order-balanced P(A better) minus 0.5, averaged over the two prompts (0: none), with a 95% bootstrap
interval. Position bias: the share of single-order verdicts won by the response shown first, minus
0.5, with a 95% bootstrap interval over those verdicts (0: none; +0.5: always the first shown).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import report
from ..config import ConfigError, RewardSourceConfig, option, require
from ..data import DataError
from .common import JudgeSourceConfig, finish, judge_of, pyplot, scorer, write_jsonl

PADDING = ["I hope this helps.", "Let me know if you have any other questions.", "Thank you for asking."]


@dataclass
class AuditConfig(RewardSourceConfig, JudgeSourceConfig):
    """Counterfactual bias probes (names, demographic terms, dialect) and length bias of a reward source;
    position bias and counterfactual preferences of an AI judge."""

    output_dir: str = option("", "Where summary.json, probes_scored.jsonl and report.html go (required).")
    probes: list[str] = option([], "Probe files of your own (JSONL: axis, prompt, response, swaps, optional groups).")
    default_probes: bool = option(True, "Include the probe set shipped with rlhfkit.")
    length_padding: list[str] = option(PADDING, "Neutral sentences appended (one, then all) to test the length bias.")
    n_boot: int = option(2000, "Bootstrap resamples for the intervals.")
    seed: int = option(0, "Bootstrap seed.")
    device: str = option("auto", "auto, cpu, cuda.")


def builtin_probes() -> str:
    return str(resources.files("rlhfkit") / "evaluate" / "probes.jsonl")


def load_probes(path: str) -> list[dict]:
    """Validated probe records; errors name the file, line and field."""
    out = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg}", path, lineno) from None
        if not isinstance(rec, dict):
            raise DataError("expected a JSON object", path, lineno)
        for name in ("axis", "prompt", "response"):
            if not isinstance(rec.get(name), str) or not rec[name].strip():
                raise DataError(f"field '{name}': expected a non-empty string, got {rec.get(name)!r}", path, lineno)
        if "{X}" not in rec["prompt"] + rec["response"]:
            raise DataError("neither 'prompt' nor 'response' has the slot {X}", path, lineno)
        swaps = rec.get("swaps")
        if not (isinstance(swaps, list) and swaps and all(isinstance(s, list) and len(s) == 2 and
                                                          all(isinstance(t, str) for t in s) for s in swaps)):
            raise DataError(f"field 'swaps': expected a non-empty list of [a, b] string pairs, got {swaps!r}", path, lineno)
        groups = rec.get("groups", ["A", "B"])
        if not (isinstance(groups, list) and len(groups) == 2 and all(isinstance(g, str) for g in groups)):
            raise DataError(f"field 'groups': expected two strings, got {groups!r}", path, lineno)
        out.append({**rec, "groups": groups, "where": f"{path}:{lineno}"})
    if not out:
        raise DataError("no probes", path)
    return out


def counterfactuals(probes: list[dict]) -> list[dict]:
    """One row per probe and swap: the two filled (prompt, response) versions."""
    rows = []
    for p in probes:
        for a, b in p["swaps"]:
            rows.append({"axis": p["axis"], "groups": p["groups"], "where": p["where"], "a": a, "b": b,
                         "prompt_a": p["prompt"].replace("{X}", a), "response_a": p["response"].replace("{X}", a),
                         "prompt_b": p["prompt"].replace("{X}", b), "response_b": p["response"].replace("{X}", b)})
    return rows


def axis_effects(rows: list[dict], reward_sd: float, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per axis: counterfactual pairs, mean r(A) - r(B) with a 95% bootstrap CI, the standardised
    effect (mean / ``reward_sd``) and whether the interval excludes 0."""
    from ..stats import bootstrap_ci

    out = []
    for axis in dict.fromkeys(r["axis"] for r in rows):
        diffs = [r["reward_a"] - r["reward_b"] for r in rows if r["axis"] == axis]
        groups = next(r["groups"] for r in rows if r["axis"] == axis)
        mean = sum(diffs) / len(diffs)
        lo, hi = bootstrap_ci(diffs, n_boot=n_boot, seed=seed)
        out.append({"axis": axis, "group_a": groups[0], "group_b": groups[1], "pairs": len(diffs),
                    "mean_diff": mean, "ci": [lo, hi], "effect_size": mean / reward_sd if reward_sd > 0 else 0.0,
                    "biased": lo > 0 or hi < 0})
    return out


def _figure(effects: list[dict], length: dict, lengths: list[int], rewards: list[float]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [e["axis"] for e in effects]
    means = [e["mean_diff"] for e in effects]
    err = [[m - e["ci"][0] for m, e in zip(means, effects)], [e["ci"][1] - m for m, e in zip(means, effects)]]
    axes[0].barh(names, means, xerr=err, capsize=3, color=["tab:red" if e["biased"] else "tab:blue" for e in effects])
    axes[0].axvline(0, color="black", lw=1)
    axes[0].set(xlabel="mean reward difference r(A) - r(B), 95% CI", title="Counterfactual swaps (red: CI excludes 0)")
    axes[1].scatter(lengths, rewards, s=10, alpha=0.6)
    axes[1].set(xlabel="response length (words)", ylabel="reward",
                title=f"Reward vs length (slope {length['slope']:.3g}/word)")
    axes[1].grid(alpha=0.3)
    return fig


def judge_audit(judge, rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Position bias and per-axis counterfactual preference of a judge (see the module docstring)."""
    from ..judge import compare, judge_stats
    from ..stats import bootstrap_ci

    n = len(rows)
    prompts = [r["prompt_a"] for r in rows] + [r["prompt_b"] for r in rows]
    a, b = [r["response_a"] for r in rows] * 2, [r["response_b"] for r in rows] * 2
    verdicts = compare(judge, prompts, a, b)
    first = []  # 1 where a single-order verdict went to the response shown first
    for v in verdicts:
        r1, r2 = v.raw
        first += [float(r1 == "a")] if r1 is not None else []
        first += [float(r2 == "b")] if r2 is not None else []
    for r, va, vb in zip(rows, verdicts[:n], verdicts[n:]):
        r["judge_pref_a"] = (va.p_a + vb.p_a) / 2 - 0.5
    axes = []
    for axis in dict.fromkeys(r["axis"] for r in rows):
        prefs = [r["judge_pref_a"] for r in rows if r["axis"] == axis]
        lo, hi = bootstrap_ci(prefs, n_boot=n_boot, seed=seed)
        axes.append({"axis": axis, "pairs": len(prefs), "pref_a": sum(prefs) / len(prefs), "ci": [lo, hi],
                     "biased": lo > 0 or hi < 0})
    out = {"name": judge.name, "axes": axes, "biased_axes": [e["axis"] for e in axes if e["biased"]],
           **{k: v for k, v in judge_stats(verdicts, a, b).items() if k in ("pairs", "ties", "raw_verdicts")}}
    if first:
        lo, hi = bootstrap_ci(first, n_boot=n_boot, seed=seed)
        bias = sum(first) / len(first) - 0.5
        out.update(position_bias=bias, position_bias_ci=[lo - 0.5, hi - 0.5], position_biased=lo > 0.5 or hi < 0.5)
    else:  # every single-order verdict was exactly 0.5
        out.update(position_bias=0.0, position_bias_ci=[0.0, 0.0], position_biased=False)
    return out


def _reward_audit(cfg: AuditConfig, score, rows: list[dict]) -> tuple[dict, list]:
    """Counterfactual and length effects under a reward source: summary figures and report sections."""
    import statistics

    from ..stats import bootstrap_ci, slope_ci

    n = len(rows)
    rewards = score([r["prompt_a"] for r in rows] + [r["prompt_b"] for r in rows],
                    [r["response_a"] for r in rows] + [r["response_b"] for r in rows]).tolist()
    for r, ra, rb in zip(rows, rewards[:n], rewards[n:]):
        r["reward_a"], r["reward_b"] = ra, rb
    # length: each A version once with the first padding sentence, once with all of them
    pads = [" " + cfg.length_padding[0], " " + " ".join(cfg.length_padding)] if cfg.length_padding else []
    padded = {}
    for k, pad in enumerate(pads):
        padded[k] = score([r["prompt_a"] for r in rows], [r["response_a"] + pad for r in rows]).tolist()
    all_rewards = rewards + [x for v in padded.values() for x in v]
    sd = statistics.pstdev(all_rewards) if len(all_rewards) > 1 else 0.0
    effects = axis_effects(rows, sd, cfg.n_boot, cfg.seed)
    texts = [r["response_a"] for r in rows] + [r["response_b"] for r in rows] + \
            [r["response_a"] + pad for pad in pads for r in rows]
    lengths = [len(t.split()) for t in texts]
    length = {"slope": 0.0, "slope_ci": [0.0, 0.0], "corr": 0.0}
    if len(set(lengths)) > 1:
        length = slope_ci(lengths, all_rewards, cfg.n_boot, cfg.seed)
    if pads:
        gains = [x - r["reward_a"] for x, r in zip(padded[len(pads) - 1], rows)]
        lo, hi = bootstrap_ci(gains, cfg.n_boot, seed=cfg.seed)
        length.update(padding_gain=sum(gains) / len(gains), padding_gain_ci=[lo, hi],
                      padding_words=len(pads[-1].split()), biased=lo > 0 or hi < 0)
    for i, r in enumerate(rows):
        r.update({f"reward_padded{k}": v[i] for k, v in padded.items()})
    summary = {"scored_by": score.name, "reward_sd": sd, "axes": effects, "length": length,
               "biased_axes": [e["axis"] for e in effects if e["biased"]]}
    fig = _figure(effects, length, lengths, all_rewards)
    sections = [
        ("Counterfactual bias probes", report.table(effects) + report.figure(fig) +
         f"<p class=note>Scored by {report.esc(score.name)}. mean_diff: reward of the group-A version minus the "
         "group-B version, nothing else changed; effect_size: mean_diff / std of all rewards in the audit.</p>"),
        ("Length bias", report.table([length]) + "<p class=note>padding_gain: reward change when neutral sentences "
         "are appended to the same response; slope: reward per word over every scored response.</p>")]
    return summary, sections


def run_audit(cfg: AuditConfig) -> dict:
    from ..models import resolve_device

    require(cfg, "output_dir")
    files = ([builtin_probes()] if cfg.default_probes else []) + list(cfg.probes)
    if not files:
        raise ConfigError("config: no probes: set 'probes' or keep 'default_probes' on")
    device = resolve_device(cfg.device)
    judge = judge_of(cfg, device)
    score = scorer(cfg, device, required=judge is None)
    rows = counterfactuals([p for f in files for p in load_probes(f)])
    summary, sections = {"probes": len(rows)}, []
    if score is not None:
        found, sections = _reward_audit(cfg, score, rows)
        summary.update(found)
        print(f"rlhfkit audit: {len(found['biased_axes'])} of {len(found['axes'])} axes with an effect (CI excludes "
              f"0): {', '.join(found['biased_axes']) or 'none'}; length slope {found['length']['slope']:.3g}/word")
    if judge is not None:
        j = summary["judge"] = judge_audit(judge, rows, cfg.n_boot, cfg.seed)
        sections.append(("Judge: position bias and counterfactual preferences",
                         report.table([{k: j[k] for k in ("name", "pairs", "ties", "raw_verdicts", "position_bias",
                                                          "position_bias_ci", "position_biased")}]) +
                         report.table(j["axes"]) +
                         "<p class=note>position_bias: share of single-order verdicts won by the response shown "
                         "first, minus 0.5. pref_a: the judge's order-balanced P(group-A version better) minus 0.5, "
                         "averaged over the group-A and group-B prompts.</p>"))
        print(f"rlhfkit audit: judge position bias {j['position_bias']:+.3f} (95% CI {j['position_bias_ci'][0]:+.3f} "
              f"to {j['position_bias_ci'][1]:+.3f}); axes with a preference: {', '.join(j['biased_axes']) or 'none'}")
    out = Path(cfg.output_dir)
    write_jsonl(out / "probes_scored.jsonl", rows)
    report.write(out / "report.html", "rlhfkit audit", sections)
    print(f"rlhfkit audit -> {out}")
    return finish(cfg, summary)
