"""Gradient checkpointing on vs off through the real recipes (SFT, DPO), on a GPU or the CPU.

Each (stage, setting) runs in its own process, so peak memory is the process's own:
``torch.cuda.max_memory_allocated`` on a GPU, the RSS high-water mark (``ru_maxrss``) on the CPU.
Both settings train the same model on the same data with the same seed, so the final losses must
agree to rounding (bf16 autocast on GPUs: a few 1e-3; fp32 on CPU: 1e-6); the script prints the
difference next to the memory and time ratios.

    python benchmarks/checkpointing.py --tiny          # CPU, seconds (tests/integration runs it)
    python benchmarks/checkpointing.py --out DIR       # a GPU: Llama 24 x 1024, 1,024-token rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"w{i}" for i in range(2000)]
PROFILES = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "rows": 16, "words": 40, "steps": 2, "batch": 4},
    "full": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "rows": 256, "words": 500, "steps": 8,
             "batch": 16},
}


def prepare(workdir: Path, prof: dict) -> dict:
    """A word-tokenised Llama and SFT/DPO files whose rows are ~2 x ``words`` tokens long."""
    import random

    from rlhfkit.tiny_models import make_tiny_model_dir

    rng = random.Random(0)
    text = lambda: " ".join(rng.choice(WORDS) for _ in range(prof["words"]))  # noqa: E731
    sft, dpo = workdir / "sft.jsonl", workdir / "dpo.jsonl"
    with open(sft, "w") as f_sft, open(dpo, "w") as f_dpo:
        for _ in range(prof["rows"]):
            prompt = text()
            f_sft.write(json.dumps({"prompt": prompt, "completion": text()}) + "\n")
            f_dpo.write(json.dumps({"prompt": prompt, "chosen": text(), "rejected": text()}) + "\n")
    model = make_tiny_model_dir(workdir / "model", WORDS, seed=0, hidden_size=prof["hidden_size"],
                                num_layers=prof["num_layers"], num_heads=prof["num_heads"],
                                max_positions=4 * prof["words"] + 16)
    return {"model": model, "sft": str(sft), "dpo": str(dpo)}


def worker(stage: str, checkpointing: bool, paths: dict, prof: dict, out: Path) -> dict:
    import torch

    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.sft import SFTConfig
    from rlhfkit.train.dpo import run_dpo
    from rlhfkit.train.sft import run_sft

    common = dict(model=paths["model"], data=paths[stage], output_dir=str(out), max_steps=prof["steps"],
                  batch_size=prof["batch"], micro_batch_size=prof["batch"], max_length=4 * prof["words"] + 8,
                  learning_rate=1e-4, logging_steps=1, seed=0, gradient_checkpointing=checkpointing)
    run, cfg = (run_sft, SFTConfig(**common)) if stage == "sft" else (
        run_dpo, DPOConfig(**common, max_prompt_length=2 * prof["words"] + 4, precompute_ref=True))
    started = time.perf_counter()
    summary = run(cfg)
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"stage": stage, "checkpointing": checkpointing, "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": summary["train_seconds"], "loss": summary["train"]["loss"],
            "peak_mib": round(peak / 2**20, 1), "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    prof = PROFILES["tiny" if args.tiny else "full"]
    if args.worker:
        stage, flag, workdir = args.worker
        paths = json.loads((Path(workdir) / "paths.json").read_text())
        row = worker(stage, flag == "on", paths, prof, Path(workdir) / f"{stage}-{flag}")
        print("ROW " + json.dumps(row), flush=True)
        return
    workdir = Path(tempfile.mkdtemp(prefix="rlhfkit-ckpt-"))
    (workdir / "paths.json").write_text(json.dumps(prepare(workdir, prof)))
    rows = []
    for stage in ("sft", "dpo"):
        for flag in ("off", "on"):
            cmd = [sys.executable, __file__, "--worker", stage, flag, str(workdir)] + (["--tiny"] if args.tiny else [])
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("ROW ")]
            if done.returncode or not lines:
                sys.exit(f"{stage} checkpointing {flag} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][4:]))
            print(json.dumps(rows[-1]), flush=True)
    table = ["| stage | peak MiB off | peak MiB on | on / off | train s off | train s on | on / off | loss off | loss on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for off, on in zip(rows[0::2], rows[1::2]):
        table.append(f"| {off['stage']} | {off['peak_mib']} | {on['peak_mib']} | {on['peak_mib'] / off['peak_mib']:.2f} "
                     f"| {off['train_seconds']:.2f} | {on['train_seconds']:.2f} "
                     f"| {on['train_seconds'] / off['train_seconds']:.2f} | {off['loss']:.6f} | {on['loss']:.6f} |")
    shutil.rmtree(workdir, ignore_errors=True)
    text = f"device: {rows[0]['device']}\n\n" + "\n".join(table) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "checkpointing.json").write_text(json.dumps(rows, indent=2))
        (args.out / "checkpointing.md").write_text(text)


if __name__ == "__main__":
    main()
