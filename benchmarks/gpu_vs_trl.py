"""rlhfkit vs TRL on one GPU: SFT, DPO and GRPO on a random-initialised ~0.48B Llama in bf16.

Same model folder (written once: Llama shape, hidden 1024, 32 layers, 16 heads, MLP 2816, a 32,000-word
vocabulary, untied head: 476M parameters; nothing downloaded), same data files in TRL's formats (prompts 180-220
tokens, responses 150-300), same steps and batch on both sides. Each (stage, side) runs in a fresh
subprocess that first warms the GPU up (one forward/backward and a short ``generate`` of the same
model, untimed), then resets the peak-memory counter and runs the side through
``benchmarks/vs_trl.py``'s drivers (``run_rlhfkit`` / ``run_trl`` with a GPU ``Setup``): bf16
autocast over fp32 weights on both (rlhfkit ``dtype: bfloat16``, TRL ``bf16=True``), gradient
checkpointing off on both, DPO reference log-probs precomputed on both (rlhfkit ``precompute_ref``,
TRL ``precompute_ref_log_probs``), TRL GRPO generating with ``model.generate`` (no vLLM).

Timed span, as in vs_trl.py: rlhfkit's ``train_seconds`` (from the loaded model to the last step:
tokenisation and reference pre-computation included); TRL's trainer construction plus ``train()``.
Each data file holds exactly one pass of the steps asked for, so both sides train the same rows and
the token counts are exact: SFT counts prompt + completion tokens, DPO prompt + chosen and
prompt + rejected, GRPO prompt + ``--new-tokens`` per completion (an upper bound for completions
that end early; a random model almost never samples EOS). MFU = 6 * N_params * tokens/s / peak
dense bf16 FLOP/s of the GPU (a table by device name, 989e12 when unknown); for GRPO that is a
training-equivalent figure (sampling costs 2N per token, not 6N). Both sides sample under bf16
autocast (rlhfkit's rollouts run under the run's autocast; TRL's under its own); rlhfkit loads the
model with FlashAttention-2 where ``flash_attn`` is installed, SDPA otherwise.

    bash benchmarks/gpu_run.sh                     # on the GPU machine, writes $OUT
    PYTHONPATH=src python benchmarks/gpu_vs_trl.py --out /tmp/gpu-bench [--stages sft,dpo] [--sft-steps 20]
    PYTHONPATH=src python benchmarks/gpu_vs_trl.py --tiny --out /tmp/gpu-tiny   # CPU smoke run, fp32, < 90 s
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vs_trl  # noqa: E402

STAGES = ("sft", "dpo", "grpo")
SIDES = ("rlhfkit", "trl")
# Model and data shapes: prompt and response lengths are (low, high) token counts, drawn uniformly.
# Full steps, by estimate on an H200 (6N FLOPs a token at ~30% MFU; GRPO ~3 s a step of sampling):
# 10-25 s of training per (stage, side), so fixed costs (trainer construction, first-step allocations)
# stay small, and about 5 minutes in all with the six processes' start-up.
PROFILES = {
    "full": dict(hidden=1024, layers=32, heads=16, intermediate=2816, vocab=32000, positions=1024,
                 prompt=(180, 220), response=(150, 300), max_length=640,
                 sft_steps=80, dpo_steps=40, grpo_steps=6, batch=16, grpo_prompts=8, generations=8, new_tokens=128),
    "tiny": dict(hidden=64, layers=2, heads=4, intermediate=256, vocab=1500, positions=128,
                 prompt=(10, 20), response=(6, 16), max_length=64,
                 sft_steps=2, dpo_steps=2, grpo_steps=2, batch=4, grpo_prompts=2, generations=4, new_tokens=8),
}
# Dense bf16 peak FLOP/s by device-name fragment (first match wins); the SXM figures.
PEAK_FLOPS = (("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("GH200", 989e12), ("B200", 2250e12),
              ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12))
DEFAULT_PEAK = 989e12


def peak_flops(device_name: str | None) -> float:
    return next((f for frag, f in PEAK_FLOPS if device_name and frag in device_name), DEFAULT_PEAK)


# --------------------------------------------------------------------------- data and model (main process)


def write_data(workdir: Path, prof: dict, seed: int = 0) -> dict:
    """One pass of each stage's steps: SFT and DPO rows, GRPO prompts, in TRL's formats."""
    rng = random.Random(seed)
    n_words = prof["vocab"] - len(_word_specials())
    words = [f"w{i}" for i in range(n_words)]

    def text(lo_hi, lead=""):
        return lead + " ".join(rng.choice(words) for _ in range(rng.randint(*lo_hi)))

    # Responses start with a space, as TRL's prompt-completion data does: TRL tokenises prompt + response
    # as one string, so without it the two boundary words would merge into one unknown word.
    rows = {"sft": [{"prompt": text(prof["prompt"]), "completion": text(prof["response"], " ")}
                    for _ in range(prof["sft_steps"] * prof["batch"])],
            "pairs": [{"prompt": text(prof["prompt"]), "chosen": text(prof["response"], " "),
                       "rejected": text(prof["response"], " ")} for _ in range(prof["dpo_steps"] * prof["batch"])],
            "prompts": [{"prompt": text(prof["prompt"])} for _ in range(prof["grpo_steps"] * prof["grpo_prompts"])]}
    paths = {}
    for name, recs in rows.items():
        paths[name] = str(workdir / f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    return paths


def _word_specials() -> list[str]:
    from rlhfkit.tiny_models import WORD_SPECIALS

    return WORD_SPECIALS


def write_model(path: Path, prof: dict) -> int:
    """A word-level tokenizer of exactly ``vocab`` entries and a random Llama; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import save_model
    from rlhfkit.tiny_models import build_word_tokenizer

    words = [f"w{i}" for i in range(prof["vocab"] - len(_word_specials()))]
    tok = build_word_tokenizer([" ".join(words)])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=prof["hidden"], intermediate_size=prof["intermediate"],
                         num_hidden_layers=prof["layers"], num_attention_heads=prof["heads"],
                         num_key_value_heads=prof["heads"], max_position_embeddings=prof["positions"],
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    save_model(model, tok, path)
    return sum(p.numel() for p in model.parameters())


def token_counts(paths: dict, prof: dict) -> dict:
    """Tokens one pass trains on, per stage, as rlhfkit tokenises them (same tokenizer on both sides)."""
    from rlhfkit.data import load_preference, load_prompts, load_sft
    from rlhfkit.data.tokenize import prompt_ids, tokenize_preference, tokenize_sft
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(paths["model"])
    sft, cut_sft = tokenize_sft(load_sft(paths["sft"]), tok, prof["max_length"])
    pairs, cut_dpo = tokenize_preference(load_preference(paths["pairs"]), tok, prof["max_length"], prof["max_length"])
    if cut_sft or cut_dpo:
        raise SystemExit(f"{cut_sft} SFT rows and {cut_dpo} pairs exceed max_length {prof['max_length']}")
    prompts = [len(prompt_ids(tok, ex.prompt)) for ex in load_prompts(paths["prompts"])]
    return {"sft": sum(len(r.input_ids) for r in sft),
            "dpo": sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
            "grpo": sum(prof["generations"] * (n + prof["new_tokens"]) for n in prompts)}


# --------------------------------------------------------------------------- one (stage, side), in its own process


def setup_for(prof: dict, cuda: bool) -> vs_trl.Setup:
    return vs_trl.Setup(batch=prof["batch"], max_length=prof["max_length"], rl_prompts=prof["grpo_prompts"],
                        rl_generations=prof["generations"], rl_new_tokens=prof["new_tokens"], cuda=cuda)


def warm_up(model_dir: str, prof: dict, cuda: bool) -> None:
    """Untimed: CUDA context, cuBLAS handles and kernels for this model's shapes, then a clean peak counter."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    ids = torch.randint(10, prof["vocab"], (prof["batch"], prof["prompt"][1] + prof["response"][1]), device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            model.generate(input_ids=ids[:2, :8], max_new_tokens=4, do_sample=True,
                           pad_token_id=model.config.pad_token_id)
    del model, ids
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def worker(side: str, stage: str, workdir: Path, prof: dict) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not prof.get("cpu")
    paths = json.loads((workdir / "paths.json").read_text())
    warm_up(paths["model"], prof, cuda)
    out = workdir / f"out-{side}-{stage}"
    opts = {"precompute_ref_log_probs": True} if side == "trl" and stage == "dpo" else {}
    run = vs_trl.run_trl if side == "trl" else vs_trl.run_rlhfkit
    seconds = run(stage, paths, out, prof[f"{stage}_steps"], opts, setup_for(prof, cuda))
    row = {"side": side, "stage": stage, "seconds": seconds,
           "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
           "device": torch.cuda.get_device_name() if cuda else "cpu"}
    summary = out / "summary.json"
    if side == "rlhfkit" and summary.exists():  # its own per-step split (last step), for reading the table
        train = json.loads(summary.read_text()).get("train", {})
        row["rlhfkit_last_step"] = {k: v for k, v in train.items() if k.startswith("time_") or k in (
            "tokens_per_second", "samples_per_second", "peak_memory_mib")}
    return row


def spawn(side: str, stage: str, args, prof: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, stage, "--workdir", str(args.workdir),
           "--profile", json.dumps(prof)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
               PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"side": side, "stage": stage, "error": f"timed out after {args.worker_timeout} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        return {"side": side, "stage": stage, "error": f"exit {res.returncode}: {res.stderr[-2500:]}"}
    row = json.loads(lines[-1])
    row["process_seconds"] = round(time.perf_counter() - t0, 1)
    return row


# --------------------------------------------------------------------------- report


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers", "rlhfkit"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import rlhfkit

    out["rlhfkit_path"] = str(Path(rlhfkit.__file__).parent)
    return out


def add_rates(row: dict, tokens: dict, prof: dict, n_params: int) -> dict:
    if "error" in row:
        return row
    stage = row["stage"]
    row["tokens"] = tokens[stage]
    row["tokens_per_s"] = tokens[stage] / row["seconds"]
    units = {"sft": prof["sft_steps"] * prof["batch"], "dpo": prof["dpo_steps"] * prof["batch"],
             "grpo": prof["grpo_steps"] * prof["grpo_prompts"] * prof["generations"]}[stage]
    row["unit"] = {"sft": "examples/s", "dpo": "pairs/s", "grpo": "completions/s"}[stage]
    row["units_per_s"] = units / row["seconds"]
    gpu = row.get("device") not in (None, "cpu")
    row["mfu"] = 6 * n_params * row["tokens_per_s"] / peak_flops(row["device"]) if gpu else None
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    gpu = meta["device"] != "cpu"
    lines = [f"rlhfkit vs TRL on {meta['device']} ({meta['n_params'] / 1e6:.1f}M parameters, "
             f"{'bf16 autocast' if gpu else 'fp32'}); versions: "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k != "rlhfkit_path"), "",
             "| stage | side | seconds | tokens/s | other unit/s | peak GPU GiB | MFU |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            last = (r["error"].strip().splitlines() or [""])[-1][:120]
            lines.append(f"| {r['stage']} | {r['side']} | failed: {last} | | | | |")
            continue
        peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['stage']} | {r['side']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['units_per_s']:.2f} {r['unit']} | {peak} | {mfu} |")
    lines += ["", "| stage | tokens/s rlhfkit / TRL | peak memory rlhfkit / TRL |", "|---|---|---|"]
    for stage in meta["stages"]:
        got = {r["side"]: r for r in rows if r["stage"] == stage and "error" not in r}
        if {"rlhfkit", "trl"} <= set(got):
            a, b = got["rlhfkit"], got["trl"]
            mem = f"{a['peak_gpu_gib'] / b['peak_gpu_gib']:.2f}x" if a["peak_gpu_gib"] and b["peak_gpu_gib"] else "-"
            lines.append(f"| {stage} | **{a['tokens_per_s'] / b['tokens_per_s']:.2f}x** | {mem} |")
    lines += ["", "Notes: " + " ".join(meta["notes"])]
    return "\n".join(lines) + "\n"


NOTES = ["Timed span: rlhfkit train_seconds vs TRL trainer construction + train() (tokenisation and reference",
         "pre-computation inside both), after an untimed warm-up in the same process.",
         "GRPO tokens count prompt + max new tokens per completion; its MFU is training-equivalent (6N per token).",
         "rlhfkit samples outside autocast (fp32 rollouts on a GPU); TRL samples with model.generate (no vLLM)."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=False, help="folder for results.json and results.md")
    p.add_argument("--tiny", action="store_true", help="tiny model, short rows, 2 steps each, CPU and fp32")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--sides", default=",".join(SIDES))
    for key in ("sft_steps", "dpo_steps", "grpo_steps", "batch", "grpo_prompts", "generations", "new_tokens"):
        p.add_argument("--" + key.replace("_", "-"), type=int, help=f"default: {PROFILES['full'][key]} "
                       f"({PROFILES['tiny'][key]} with --tiny)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-gpu-bench"), help="model and data (not --out)")
    p.add_argument("--worker-timeout", type=float, default=240.0, help="seconds per (stage, side) process")
    p.add_argument("--jobs", type=int, help="(stage, side) processes at once; default 1 (2 with --tiny, whose "
                   "timings mean nothing): more than 1 makes the measurements share the machine")
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "STAGE"), help=argparse.SUPPRESS)
    p.add_argument("--profile", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.workdir, json.loads(args.profile))), flush=True)
        return
    if args.out is None:
        p.error("--out is required")
    prof = dict(PROFILES["tiny" if args.tiny else "full"], cpu=args.tiny)
    prof.update({k: v for k, v in vars(args).items() if k in prof and v is not None})
    args.jobs = args.jobs or (2 if args.tiny else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    meta = {"versions": versions(), "profile": prof, "stages": args.stages.split(","), "notes": NOTES,
            "command": " ".join(sys.argv)}
    print(json.dumps(meta["versions"]), flush=True)
    t0 = time.perf_counter()
    paths = write_data(args.workdir, prof)
    paths["model"] = str(args.workdir / "model")
    meta["n_params"] = write_model(Path(paths["model"]), prof)
    (args.workdir / "paths.json").write_text(json.dumps(paths))
    tokens = token_counts(paths, prof)
    meta.update(tokens=tokens, prepare_seconds=round(time.perf_counter() - t0, 1), device="cpu")
    print(f"model {meta['n_params'] / 1e6:.1f}M parameters, tokens per pass {tokens}, "
          f"prepared in {meta['prepare_seconds']} s", flush=True)
    rows: list[dict] = []
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    sides = [side for side in args.sides.split(",") if side]  # --sides '': prepare only (a dry run)
    todo = [(stage, side) for stage in meta["stages"] for side in sides]
    with ThreadPoolExecutor(args.jobs) as pool:  # jobs > 1 only for smoke runs: the timings then share the machine
        for (stage, side), raw in zip(todo, pool.map(lambda t: spawn(t[1], t[0], args, prof), todo)):
            row = add_rates(raw, tokens, prof, meta["n_params"])
            rows.append(row)
            meta["device"] = row.get("device", meta["device"])
            print(f"  {stage} {side}: " + json.dumps({k: v for k, v in row.items() if k != "error"})
                  + (f"\n    ERROR {row['error']}" if "error" in row else ""), flush=True)
            (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (args.out / "results.md").write_text(table)
    print("\n" + table, flush=True)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
