"""``rlhfkit frontier``: reward vs KL across checkpoints or runs, in the style of Gao et al. 2023.

Each policy (a run's output folder or a checkpoint saved as a model folder, ``name=folder``) is
sampled on the prompts; its sequence-level KL to the baseline is estimated from its own samples
and its samples are scored by the proxy reward (the reward model the policies were trained on)
and, optionally, by a held-out "gold" reward (a second reward model or a function). Optionally
the baseline's best-of-N frontier is added (``best_of``; KL = log N - (N-1)/N). The figure plots
reward gain over the baseline against sqrt(KL), Gao et al.'s x-axis, with their fitted curves
(best-of-N: d(alpha - beta d); RL: d(alpha - beta log d), d = sqrt(KL)) when ``fit`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import report
from ..config import ConfigError, GenerationConfig, RewardSourceConfig, option, require
from .common import columns_of, finish, pyplot


@dataclass
class FrontierConfig(RewardSourceConfig, GenerationConfig):
    """Proxy and held-out reward vs KL to a baseline, across policies (checkpoints or runs)."""

    baseline: str = option("", "The starting policy (e.g. the SFT model): KL is measured to it (required).")
    policies: list[str] = option([], "Policies as name=folder (runs or checkpoint model folders), e.g. ppo_kl0.1=runs/ppo (required).")
    data: str = option("", "Prompts: records with a `prompt`; other columns reach reward functions (required).")
    output_dir: str = option("", "Where frontier.json, frontier.png, summary.json and report.html go (required).")
    gold_reward_model: str = option("", "A held-out reward model scored beside the proxy (the 'gold' of Gao et al.).")
    gold_reward_fn: list[str] = option([], "Held-out reward functions (`file.py:name` or `module:name`), summed with gold_reward_model.")
    best_of: list[int] = option([], "N values of the baseline's best-of-N frontier under the proxy (empty: none).")
    fit: bool = option(True, "Fit Gao et al.'s functional forms to the points (needs 2 points with KL > 0).")
    samples_per_prompt: int = option(2, "Samples per prompt and policy (temperature 1).")
    seed: int = option(0, "Sampling seed.")
    device: str = option("auto", "auto, cpu, cuda.")


def _points(cfg: FrontierConfig, device) -> tuple[list[dict], list[dict]]:
    from ..data import load_prompts
    from ..rewards import make_reward
    from .frontier import best_of_n_curve
    from .policy import kl_to_reference, sample_policy

    proxy = make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, device)
    gold = make_reward(cfg.gold_reward_model, cfg.gold_reward_fn, [], device) \
        if (cfg.gold_reward_model or cfg.gold_reward_fn) else None
    examples = load_prompts(cfg.data)
    rows = []
    for spec in ["baseline=" + cfg.baseline, *cfg.policies]:
        name, sep, folder = spec.partition("=")
        if not sep or not folder:
            raise ConfigError(f"config: field 'policies': expected name=folder, got {spec!r}")
        n = cfg.samples_per_prompt
        s = sample_policy(folder, [e.prompt for e in examples], n=n, seed=cfg.seed, device=device,
                          **cfg.generation_kwargs())
        prompts, cols = [e.prompt for e in examples for _ in range(n)], columns_of(examples, n)
        row = {"policy": name, "kl": 0.0 if folder == cfg.baseline else kl_to_reference(s, cfg.baseline, device),
               "proxy_reward": float(proxy(prompts, s.texts, **cols).mean())}
        if gold is not None:
            row["gold_reward"] = float(gold(prompts, s.texts, **cols).mean())
        rows.append(row)
    bon = []
    if cfg.best_of:
        n = max(cfg.best_of)
        s = sample_policy(cfg.baseline, [e.prompt for e in examples], n=n, seed=cfg.seed + 1, device=device,
                          **cfg.generation_kwargs())
        prompts, cols = [e.prompt for e in examples for _ in range(n)], columns_of(examples, n)
        p = proxy(prompts, s.texts, **cols).tolist()
        g = gold(prompts, s.texts, **cols).tolist() if gold is not None else p
        bon = best_of_n_curve([p[i * n:(i + 1) * n] for i in range(len(examples))],
                              [g[i * n:(i + 1) * n] for i in range(len(examples))], cfg.best_of)
        if gold is None:
            for b in bon:
                del b["gold_reward"]
    return rows, bon


def _fits(rows: list[dict], bon: list[dict], keys: list[str]) -> dict:
    from .frontier import fit_gao

    fits = {}
    for key in keys:
        for form, pts, base in (("rl", rows, rows[0][key]), ("bon", bon, bon[0][key] if bon else 0.0)):
            pts = [p for p in pts if p["kl"] > 0]
            if len(pts) >= 2:
                fits[f"{form}/{key}"] = fit_gao([p["kl"] for p in pts], [p[key] - base for p in pts], form)
    return fits


def _figure(rows, bon, fits, keys):
    import numpy as np

    from .frontier import gao_curve

    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        base = rows[0][key]
        ax.scatter([p["kl"] ** 0.5 for p in rows], [p[key] - base for p in rows], marker="*", s=80, zorder=3,
                   label="policies")
        for p in rows:
            ax.annotate(p["policy"], (p["kl"] ** 0.5, p[key] - base), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if bon:
            b0 = bon[0][key]
            ax.plot([b["kl"] ** 0.5 for b in bon], [b[key] - b0 for b in bon], "o", color="black", label="best-of-N")
        top = max([p["kl"] for p in rows] + [b["kl"] for b in bon]) or 1.0
        grid = np.linspace(0, (top * 1.1) ** 0.5, 100) ** 2     # even in sqrt(KL), the x-axis
        for form, style in (("rl", "-"), ("bon", ":")):
            fit = fits.get(f"{form}/{key}")
            if fit:
                ax.plot(grid ** 0.5, gao_curve(fit, grid), style, color="grey",
                        label=f"{form} fit a={fit['alpha']:.2g} b={fit['beta']:.2g}")
        ax.set(xlabel="sqrt(KL to baseline) (sqrt nats)", ylabel=f"{key} gain over baseline", title=key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def run_frontier(cfg: FrontierConfig) -> dict:
    import json

    from ..models import resolve_device

    require(cfg, "baseline", "policies", "data", "output_dir")
    if not (cfg.reward_model or cfg.reward_fn):
        raise ConfigError("config: set 'reward_model' and/or 'reward_fn' (the proxy reward)")
    if any(n < 1 for n in cfg.best_of):
        raise ConfigError(f"config: field 'best_of': every N must be >= 1, got {cfg.best_of}")
    rows, bon = _points(cfg, resolve_device(cfg.device))
    keys = ["proxy_reward"] + (["gold_reward"] if "gold_reward" in rows[0] else [])
    fits = _fits(rows, bon, keys) if cfg.fit else {}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps({"policies": rows, "best_of_n": bon, "fits": fits}, indent=2))
    fig = _figure(rows, bon, fits, keys)
    fig.savefig(out / "frontier.png", dpi=110, bbox_inches="tight")
    report.write(out / "report.html", "rlhfkit frontier", [
        ("Reward vs KL", report.figure(fig) + report.table(rows) + (report.table(bon) if bon else "") +
         report.table([{"fit": k, **v} for k, v in fits.items()]) +
         "<p class=note>Gains are over the baseline (best-of-N: over N = 1). Where the proxy keeps rising with "
         "KL but the held-out reward turns down, the policies over-optimise the proxy (Gao et al. 2023).</p>")])
    print(f"rlhfkit frontier: {len(rows)} policies -> {out / 'frontier.png'}")
    return finish(cfg, {"policies": rows, "best_of_n": bon, "fits": fits})
