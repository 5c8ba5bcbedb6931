"""What the evaluation stages share: reward scoring behind one hook, an AI judge, output files, figure setup."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, dump_config, option


@dataclass
class JudgeSourceConfig:
    """An AI judge as the scorer of ``eval`` and ``audit`` (``rlhfkit.judge``)."""

    judge: str = option("", "An AI judge: an OpenAI-compatible `http(s)://HOST/v1` URL, a reward-model folder or a causal-LM "
                            "folder. In `eval` it decides the win rate (both orders, ties half); in `audit` it adds its "
                            "position bias and per-axis preferences.")
    judge_model: str = option("", "Model name the judge endpoint serves; empty means the first one it lists.")
    constitution: str = option("", "YAML file of principles for the judge; empty means the shipped default.")


def scorer(cfg, device, required: bool = True):
    """The reward hook of ``eval`` and ``audit``: ``fn(prompts, completions, **columns) -> (N,) tensor``
    from the configured reward model and/or reward functions (``rewards.make_reward``); None when
    neither is set and ``required`` is False (a judge scores instead)."""
    from ..rewards import make_reward

    if not (cfg.reward_model or cfg.reward_fn):
        if required:
            raise ConfigError("config: set 'reward_model' and/or 'reward_fn' to score responses")
        return None
    return make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, device)


def judge_of(cfg, device):
    """The configured AI judge (``JudgeSourceConfig``), or None."""
    if not getattr(cfg, "judge", ""):
        return None
    from ..judge import make_judge

    return make_judge(cfg.judge, cfg.constitution or None, model=cfg.judge_model, device=str(device))


def judge_outcomes(verdicts) -> list[float]:
    """1 where the judge picked ``a`` (in both orders), 0 where it picked ``b``, 0.5 for a tie."""
    return [1.0 if v.winner == "a" else 0.0 if v.winner == "b" else 0.5 for v in verdicts]


def columns_of(examples, repeat: int = 1) -> dict[str, list]:
    """Extra dataset columns as keyword lists for reward functions (TRL style), each prompt's values
    repeated ``repeat`` times; columns some records lack are left out."""
    cols: dict[str, list] = {}
    for ex in examples:
        for k, v in ex.extra.items():
            cols.setdefault(k, []).extend([v] * repeat)
    return {k: v for k, v in cols.items() if len(v) == len(examples) * repeat}


def text_of(value) -> str:
    """A prompt or response as plain text (the last message's content for chat lists)."""
    if isinstance(value, list):
        return value[-1]["content"] if value else ""
    return value


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """One JSON object a line; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def finish(cfg, summary: dict) -> dict:
    """summary.json and the resolved config.yaml in ``output_dir``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if dataclasses.is_dataclass(cfg):
        dump_config(cfg, out / "config.yaml")
    return summary


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
