"""Iterated rounds on the demo world: reward model continued from the last round vs retrained.

Runs ``rlhfkit/configs/rounds.yaml`` twice with the same base, data, SFT and annotators:

- continued: each round's reward model starts from the last round's, on this round's pairs plus
  half of the earlier rounds' (``earlier_fraction`` 0.5, the file's default);
- retrained: each round's reward model starts from SFT, on this round's pairs plus all earlier ones.

and prints, per round and variant, the reward model's accuracy on the round's fresh held-out pairs
(annotator labels and the gold order), the policy's gold win rate over SFT and its KL to SFT, and
the seconds each round took. The sizes scale with ``--scale`` (1: the file as written).

    .venv/bin/python benchmarks/rounds_rm.py --rounds 3 --out runs/rounds_rm             # full size
    .venv/bin/python benchmarks/rounds_rm.py --rounds 2 --scale 0.1 --out /tmp/rounds_rm  # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "rlhfkit" / "configs" / "rounds.yaml"


def spec_for(variant: str, rounds: int, scale: float, cache: str) -> dict:
    spec = yaml.safe_load(CONFIG.read_text())
    spec["rounds"] = rounds
    by_name = {st["name"]: st for st in spec["stages"] + spec["round"]["stages"]}
    by_name["base"].setdefault("with", {})["cache_dir"] = cache
    if scale < 1:
        s = lambda n, low=2: max(low, int(n * scale))  # noqa: E731
        by_name["base"]["with"].update(steps=s(2000, 50))
        by_name["data"]["with"] = {"n_sft": s(2000, 200), "train_prompts_per_category": s(60, 4),
                                   "eval_prompts_per_category": s(20, 4)}
        by_name["sft"]["with"]["max_steps"] = s(300, 30)
        by_name["rm"]["with"]["max_steps"] = s(200, 20)
        by_name["policy"]["with"].update(max_steps=s(50, 4), batch_size=8)
    # the RM's accuracy against the gold order on the same fresh held-out pairs
    spec["round"]["stages"].insert(4, {"name": "rm_gold", "stage": "rm-eval",
                                       "with": {"reward_model": "{rm}", "data": "{labels}/eval_gold.jsonl"}})
    if variant == "retrained":
        by_name["rm"]["with"]["model"] = "{sft}"
        by_name["mix"]["with"]["earlier_fraction"] = 1.0
    return spec


def run_variant(variant: str, args) -> list[dict]:
    out = Path(args.out) / variant
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pipeline.yaml"
    spec = spec_for(variant, args.rounds, args.scale, str(Path(args.out) / "cache"))
    spec["output_dir"] = str(out)
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--pipeline", str(path), "--output_dir", str(out)],
                   check=True, env=env)
    rows = []
    for r in range(1, args.rounds + 1):
        st = {p.parent.name: json.loads(p.read_text()) for p in (out / f"round{r}").glob("*/.rlhfkit-stage.json")}
        policy = st["eval"]["summary"]["policy"]
        rows.append({"variant": variant, "round": r, "rm_acc_fresh": st["rm"]["summary"]["eval_accuracy"],
                     "rm_acc_gold_order": st["rm_gold"]["summary"].get("accuracy"),
                     "winrate_vs_sft": policy["gold_winrate_vs_sft"], "kl": policy["kl_to_baseline"],
                     "round_seconds": round(sum(m["seconds"] for m in st.values()), 1)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default="runs/rounds_rm")
    args = p.parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    rows = run_variant("continued", args) + run_variant("retrained", args)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}, {time.time() - t0:.0f} s; rounds {args.rounds}, scale {args.scale}")
    print("| variant | round | RM acc. fresh pairs (labels) | RM acc. (gold order) | gold win rate vs SFT | KL | round s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {r['variant']} | {r['round']} | {f(r['rm_acc_fresh'])} | {f(r['rm_acc_gold_order'])} | "
              f"{f(r['winrate_vs_sft'])} | {f(r['kl'])} | {r['round_seconds']} |")


if __name__ == "__main__":
    main()
