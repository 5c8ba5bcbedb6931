"""``rlhfkit eval``: a policy against a baseline on the same prompts, scored by a reward source
or decided by an AI judge.

Both policies are sampled ``samples_per_prompt`` times per prompt at temperature 1 with the same
seed; sample j of the policy is paired with sample j of the baseline for the same prompt. Reported:
the win rate (ties count half) with a 95% percentile bootstrap interval, the length-controlled win
rate (``stats.length_controlled_win_rate``), mean reward and response length of each side, and the
sequence-level KL(policy || baseline) estimated from the policy's samples (``policy.kl_to_reference``;
needs the two to share a tokenizer).

With a ``judge`` (``rlhfkit.judge``), the judge compares each pair in both orders (an order
disagreement is a tie) and its verdicts make the win rate; the judge's position and length bias
are reported beside it. A reward source, if also set, still gives the mean rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import report
from ..config import GenerationConfig, RewardSourceConfig, option, require
from .common import (JudgeSourceConfig, columns_of, finish, judge_of, judge_outcomes, pyplot, scorer,
                     text_of, write_jsonl)


@dataclass
class EvalConfig(RewardSourceConfig, JudgeSourceConfig, GenerationConfig):
    """Win rate of `policy` over `baseline` on prompts (`data`), scored by a reward model or functions, or an AI judge."""

    policy: str = option("", "Policy folder to evaluate (required).")
    baseline: str = option("", "Baseline policy folder (e.g. the SFT model); also the reference of the KL (required).")
    data: str = option("", "Prompts: records with a `prompt`; other columns reach reward functions (required).")
    output_dir: str = option("", "Where summary.json, samples.jsonl and report.html go (required).")
    samples_per_prompt: int = option(1, "Samples per prompt and policy (temperature 1, same seed for both).")
    max_prompt_length: int = option(256, "Longest prompt in tokens (prompts keep their end).")
    n_boot: int = option(2000, "Bootstrap resamples for the confidence intervals.")
    seed: int = option(0, "Sampling and bootstrap seed.")
    device: str = option("auto", "auto, cpu, cuda.")


def _same_vocab(a: str, b: str) -> bool:
    from ..models import load_tokenizer

    return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def evaluate_pair(cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """The summary figures and the per-sample rows (no files written)."""
    from ..data import load_prompts
    from ..models import resolve_device
    from ..stats import bootstrap_ci, length_controlled_win_rate, paired_outcomes, win_rate
    from .policy import kl_to_reference, sample_policy

    require(cfg, "policy", "baseline", "data", "output_dir")
    if cfg.samples_per_prompt < 1:
        raise ValueError(f"config: field 'samples_per_prompt' must be >= 1, got {cfg.samples_per_prompt}")
    device = resolve_device(cfg.device)
    judge = judge_of(cfg, device)
    score = scorer(cfg, device, required=judge is None)
    examples = load_prompts(cfg.data)
    n = cfg.samples_per_prompt
    prompts = [ex.prompt for ex in examples for _ in range(n)]
    cols = columns_of(examples, n)
    sides = {}
    for name, folder in (("policy", cfg.policy), ("baseline", cfg.baseline)):
        s = sample_policy(folder, [ex.prompt for ex in examples], n=n, seed=cfg.seed, device=device,
                          max_prompt_length=cfg.max_prompt_length, **cfg.generation_kwargs())
        sides[name] = (s, score(prompts, s.texts, **cols).tolist() if score else [None] * len(s.texts))
    (pol, pol_r), (base, base_r) = sides["policy"], sides["baseline"]
    summary = {}
    if judge is not None:
        from ..judge import compare, judge_stats

        verdicts = compare(judge, prompts, pol.texts, base.texts)
        outcomes = judge_outcomes(verdicts)
        low, high = bootstrap_ci(outcomes, n_boot=cfg.n_boot, seed=cfg.seed)
        wr = {"winrate": sum(outcomes) / len(outcomes), "winrate_ci": [low, high], "n": len(outcomes)}
        summary["judge"] = {"name": judge.name, **judge_stats(verdicts, pol.texts, base.texts)}
    else:
        verdicts = [None] * len(prompts)
        wr = win_rate(pol_r, base_r, n_boot=cfg.n_boot, seed=cfg.seed)
        outcomes = paired_outcomes(pol_r, base_r)
    lc = length_controlled_win_rate(outcomes, pol.lengths, base.lengths, n_boot=min(cfg.n_boot, 1000), seed=cfg.seed)
    same = _same_vocab(cfg.policy, cfg.baseline)
    summary.update({**wr, **lc,
                    "reward": sum(pol_r) / len(pol_r) if score else None,
                    "reward_ci": list(bootstrap_ci(pol_r, cfg.n_boot, seed=cfg.seed)) if score else None,
                    "baseline_reward": sum(base_r) / len(base_r) if score else None,
                    "length": sum(pol.lengths) / len(pol.lengths), "baseline_length": sum(base.lengths) / len(base.lengths),
                    "length_words": sum(len(t.split()) for t in pol.texts) / len(pol.texts),
                    "baseline_length_words": sum(len(t.split()) for t in base.texts) / len(base.texts),
                    "kl": kl_to_reference(pol, cfg.baseline, device) if same else None,
                    "kl_note": "KL(policy || baseline), nats per sequence, estimated from the policy's samples"
                               if same else "not computed: policy and baseline tokenizers differ",
                    "scored_by": judge.name if judge is not None else score.name,
                    "prompts": len(examples), "samples_per_prompt": n})
    rows = [{"prompt": text_of(p), "policy": pt, "baseline": bt, "policy_reward": pr, "baseline_reward": br,
             "policy_length": pl, "baseline_length": bl, "outcome": o,
             **({"judge_winner": {"a": "policy", "b": "baseline"}.get(v.winner, "tie"), "judge_p_policy": v.p_a}
                if v is not None else {})}
            for p, pt, bt, pr, br, pl, bl, o, v in zip(prompts, pol.texts, base.texts, pol_r, base_r, pol.lengths,
                                                       base.lengths, outcomes, verdicts)]
    return summary, rows


def _figure(rows: list[dict]) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if rows[0]["policy_reward"] is not None:
        for side in ("baseline", "policy"):
            axes[0].hist([r[f"{side}_reward"] for r in rows], bins=20, alpha=0.55, label=side)
            axes[1].scatter([r[f"{side}_length"] for r in rows], [r[f"{side}_reward"] for r in rows], s=10,
                            alpha=0.6, label=side)
        axes[0].set(xlabel="reward", ylabel="samples", title="Reward of the samples")
        axes[1].set(xlabel="response length (tokens)", ylabel="reward", title="Reward vs length")
        for ax in axes:
            ax.legend(fontsize=8)
    else:  # judged: the judge's order-balanced P(policy better) per pair
        p = [r["judge_p_policy"] for r in rows]
        axes[0].hist(p, bins=20, range=(0, 1))
        axes[0].set(xlabel="judge P(policy better), both orders averaged", ylabel="pairs", title="Judge verdicts")
        axes[1].scatter([r["policy_length"] - r["baseline_length"] for r in rows], p, s=10, alpha=0.6)
        axes[1].set(xlabel="policy minus baseline length (tokens)", ylabel="judge P(policy better)",
                    title="Judge verdict vs length difference")
    for ax in axes:
        ax.grid(alpha=0.3)
    return report.figure(fig)


def run_eval(cfg: EvalConfig) -> dict:
    summary, rows = evaluate_pair(cfg)
    out = Path(cfg.output_dir)
    write_jsonl(out / "samples.jsonl", rows)
    keys = ["winrate", "winrate_ci", "lc_winrate", "lc_winrate_ci", "reward", "baseline_reward", "length",
            "baseline_length", "kl", "n"]
    report.write(out / "report.html", "rlhfkit eval", [
        ("Policy vs baseline", report.table([{k: summary[k] for k in keys}]) +
         f"<p class=note>Scored by {report.esc(summary['scored_by'])}. Win rate: share of samples scored above "
         "(or judged better than) the baseline's sample for the same prompt (ties half), 95% bootstrap interval. lc_winrate: the win "
         "rate predicted at equal length (AlpacaEval-style length control). Lengths in tokens. "
         f"KL: {report.esc(summary['kl_note'])}.</p>"),
        *([("Judge", report.table([summary["judge"]]) +
            "<p class=note>Each pair judged in both orders; an order disagreement is a tie. position_bias: share "
            "of single-order verdicts won by the response shown first, minus 0.5; longer_win_rate: share of decided "
            "verdicts won by the longer response.</p>")] if "judge" in summary else []),
        ("Figures", _figure(rows)),
        ("Samples", report.side_by_side([r["prompt"] for r in rows[:12]],
                                        {s: [r[s] for r in rows[:12]] for s in ("baseline", "policy")}))])
    print(f"rlhfkit eval: win rate {summary['winrate']:.3f} (95% CI {summary['winrate_ci'][0]:.3f}-"
          f"{summary['winrate_ci'][1]:.3f}), length-controlled {summary['lc_winrate']:.3f}, KL {summary['kl']} -> {out}")
    return finish(cfg, summary)
