"""What the evaluation stages share: reward scoring behind one hook, output files, figure setup."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import ConfigError, dump_config


def scorer(cfg, device):
    """The scoring hook of ``eval`` and ``audit``: ``fn(prompts, completions, **columns) -> (N,) tensor``.

    Today: the configured reward model and/or reward functions (``rewards.make_reward``). An AI
    judge (issue #6) plugs in here as one more branch once ``rlhfkit.judge`` exists; the configs
    have no ``judge`` field until then.
    """
    from ..rewards import make_reward

    if not (cfg.reward_model or cfg.reward_fn):
        raise ConfigError("config: set 'reward_model' and/or 'reward_fn' to score responses")
    return make_reward(cfg.reward_model, cfg.reward_fn, cfg.reward_weights, device)


def check_required(cfg, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name):
            raise ConfigError(f"config: field {name!r} is required (set it in the YAML file or with --{name})")


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
