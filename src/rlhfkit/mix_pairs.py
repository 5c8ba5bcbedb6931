"""``rlhfkit mix-pairs``: this round's preference pairs plus a share of earlier rounds' pairs.

Iterated RLHF keeps what earlier rounds collected (Llama 2, Touvron et al. 2023, sec. 3.2.2: each
new reward model is trained on the new batch together with the earlier ones), so the reward model
does not forget the policies it saw before while it learns what the current one writes. Each
earlier pair is kept with probability ``earlier_fraction`` (1: all of them, a reward model
retrained on everything; 0: this round's pairs only), drawn with a fixed seed so a rerun mixes the
same rows. Records are copied as they are (any preference format the trainers read).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, dump_config, option


@dataclass
class MixPairsConfig:
    """This round's preference pairs plus a random share of earlier rounds' pairs, as one JSONL file."""

    data: str = option("", "This round's preference JSONL (required); every row is kept.")
    earlier: list[str] = option([], "Earlier rounds' preference JSONL files (a pipeline round writes "
                                    "\"{earlier.labels}/train.jsonl\": one file per earlier round).")
    earlier_fraction: float = option(0.5, "Share of the earlier pairs added, drawn at random (1: all of them).")
    output_dir: str = option("", "Where train.jsonl and summary.json go.")
    seed: int = option(0, "Seed of the draw.")

    def check(self) -> None:
        if not self.data:
            raise ConfigError("config: field 'data' is required")
        if not 0.0 <= self.earlier_fraction <= 1.0:
            raise ConfigError(f"config: field 'earlier_fraction' must be between 0 and 1, got {self.earlier_fraction}")


def _lines(path: str) -> list[str]:
    return [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def run_mix_pairs(cfg: MixPairsConfig) -> dict:
    new = _lines(cfg.data)
    rng = random.Random(cfg.seed)
    per_file = {}
    old = []
    for path in cfg.earlier:
        kept = [x for x in _lines(path) if rng.random() < cfg.earlier_fraction]
        per_file[path] = len(kept)
        old += kept
    rows = new + old
    rng.shuffle(rows)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(x + "\n" for x in rows), encoding="utf-8")
    summary = {"pairs": len(rows), "new_pairs": len(new), "earlier_pairs": len(old), "earlier_per_file": per_file}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dump_config(cfg, out / "config.yaml")
    return summary
