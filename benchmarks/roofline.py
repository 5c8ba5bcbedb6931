"""This machine's limits for the vs_trl benchmark model, and each trainer's share of them.

Measures (1) the fp32 matmul rate (square matmuls, FLOP/s), (2) the dense forward+backward rate of
the benchmark model (benchmarks/vs_trl.py's ``MODEL``) on full rows with no padding and no mask,
counted as 6N FLOPs per token (N = parameters), and (3) the same for a packed batch (the padding-free
layout, block-diagonal attention) and the same batch padded: a full SFT, RM and DPO training step
on 32 examples of the benchmark data, counted on real tokens.
With ``--vs-trl FILE`` (the ``--json`` output of vs_trl.py) it turns each trainer's throughput
into achieved model FLOP/s: 6N per trained token (+2N per token for a reference pass, DPO) and
reports it as a fraction of the dense rate.

    .venv/bin/python benchmarks/roofline.py --threads 2 [--vs-trl /tmp/vs_trl.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timed(lambda: a @ b, reps)


def dense_rate(model, n_params: int, rows: int, width: int, reps: int) -> float:
    """6N FLOPs per token of a forward+backward over full (rows, width) sequences, per second."""
    ids = torch.randint(7, model.config.vocab_size, (rows, width))

    def step():
        model(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).sum().backward()
        model.zero_grad(set_to_none=True)

    return 6 * n_params * rows * width / timed(step, reps)


def step_rates(model, n_params: int, paths: dict, reps: int) -> dict:
    """Achieved model FLOP/s of one full training step (forward, backward, fused AdamW step) on a
    32-example micro-batch of the benchmark data, packed and padded, for SFT, RM and DPO, counted
    as 6N per real (non-padding) token. Returns {(stage, layout): (FLOP/s, real tokens)}."""
    from rlhfkit.data import load_preference, load_sft
    from rlhfkit.data.tokenize import collate_pairs, collate_sft, tokenize_preference, tokenize_sft
    from rlhfkit.logprobs import response_logps
    from rlhfkit.models import load_reward_model, load_tokenizer
    from rlhfkit.train.rm import pair_rewards
    from rlhfkit.train.sft import nll_sum

    tok = load_tokenizer(paths["model"])
    pairs, _ = tokenize_preference(load_preference(paths["pairs"]), tok, vs_trl.MAX_LENGTH, vs_trl.MAX_LENGTH)
    sft_rows, _ = tokenize_sft(load_sft(paths["sft"]), tok, vs_trl.MAX_LENGTH)
    rm_model = load_reward_model(paths["model"], tok)
    stages = {"sft": (model, lambda pack: collate_sft(sft_rows[:vs_trl.BATCH], tok.pad_token_id, pack),
                      lambda m, b: nll_sum(m, b)[0]),
              "rm": (rm_model, lambda pack: collate_pairs(pairs[:vs_trl.BATCH], tok.pad_token_id, pack),
                     lambda m, b: torch.nn.functional.logsigmoid(torch.sub(*pair_rewards(m, b))).sum()),
              "dpo": (model, lambda pack: collate_pairs(pairs[:vs_trl.BATCH], tok.pad_token_id, pack),
                      lambda m, b: response_logps(m, b).sum())}
    out = {}
    for stage, (m, collate, loss_fn) in stages.items():
        opt = torch.optim.AdamW(m.parameters(), lr=1e-9, fused=True)
        for pack in (True, False):
            batch = collate(pack)

            def step():
                loss_fn(m, batch).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            out[(stage, "packed" if pack else "padded")] = (6 * n_params * int(batch["num_tokens"]) / timed(step, reps),
                                                            int(batch["num_tokens"]))
    return out


def achieved(raw: list[dict], n_params: int, sft_tokens: int, pair_tokens: int) -> dict:
    """Median achieved model FLOP/s per (stage, variant) from vs_trl.py's raw measurements."""
    per_unit = {"sft": 6 * n_params,  # rate is tokens/s
                "rm": 6 * n_params * pair_tokens / vs_trl.N_PAIRS,  # rate is pairs/s
                "dpo": 8 * n_params * pair_tokens / vs_trl.N_PAIRS}  # + reference forward (2N)
    out: dict = {}
    for r in raw:
        if r["stage"] in per_unit:
            out.setdefault((r["stage"], r["variant"]), []).append(r["rate"] * per_unit[r["stage"]])
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-bench"))
    p.add_argument("--vs-trl", type=Path, help="raw measurements from vs_trl.py --json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rlhfkit.data import load_preference
    from rlhfkit.data.tokenize import tokenize_preference
    from rlhfkit.models import load_causal_lm, load_tokenizer

    paths = vs_trl.prepare(args.workdir)
    model = load_causal_lm(paths["model"])
    n = sum(p.numel() for p in model.parameters())
    mm = matmul_rate(reps=args.reps)
    dense = dense_rate(model, n, 24, 96, args.reps)
    steps = step_rates(model, n, paths, args.reps)
    print(f"parameters N = {n:,}; threads {args.threads}")
    print(f"fp32 matmul 1024^3:                 {mm / 1e9:7.1f} GFLOP/s")
    print(f"dense fwd+bwd (24 x 96, 6N/token):  {dense / 1e9:7.1f} GFLOP/s  ({dense / mm:.0%} of matmul)")
    print("\n| training step (32 examples, fwd + bwd + AdamW) | real tokens | GFLOP/s (6N per real token) | "
          "fraction of dense |\n|---|---|---|---|")
    for (stage, lay), (rate, ntok) in steps.items():
        print(f"| {stage} {lay} | {ntok} | {rate / 1e9:.1f} | {rate / dense:.0%} |")
    if args.vs_trl:
        tok = load_tokenizer(paths["model"])
        pairs, _ = tokenize_preference(load_preference(paths["pairs"]), tok, vs_trl.MAX_LENGTH, vs_trl.MAX_LENGTH)
        pair_tokens = sum(2 * len(q.prompt_ids) + len(q.chosen_ids) + len(q.rejected_ids) for q in pairs)
        print("\n| stage | side | achieved GFLOP/s | fraction of dense |\n|---|---|---|---|")
        for (stage, side), rate in sorted(achieved(json.loads(args.vs_trl.read_text()), n, 0, pair_tokens).items()):
            print(f"| {stage} | {side} | {rate / 1e9:.1f} | {rate / dense:.0%} |")


if __name__ == "__main__":
    main()
