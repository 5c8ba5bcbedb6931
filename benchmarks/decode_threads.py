"""Sampling on 2 threads: one process, torch at 2 threads vs 1 thread vs two Python threads at 1 torch thread each.

The workload is ``vs_trl.py``'s ``grpo-g8`` rollout: its model (Llama d192 L4, ~2k-word vocabulary),
its long prompts (``prompts_long.jsonl``, 40-80 words), 4 prompts x 8 copies = 32 rows, per-row
generators (``train.rollout.row_generators``, as online RL samples), ``max_new_tokens`` 32,
temperature 1. Three ways of running ``sampling.generate``, alternating, ``--reps`` times each:

- ``seq-2t``: ``PARALLEL_DECODE = False``, ``torch.set_num_threads(2)`` (the decoding before this change);
- ``seq-1t``: ``PARALLEL_DECODE = False``, one thread;
- ``half-1t``: one thread, half the rows (2 prompts x 8 copies): one part of the split below, so the
  best the parallel path could do (two parts overlapping perfectly, no GIL contention);
- ``par-2t`` (only where ``sampling.PARALLEL_DECODE`` exists: branch ``pdecode-parallel``):
  ``PARALLEL_DECODE = True`` at 2 threads: the rows split into 2 parts (copies of a prompt
  together), decoded concurrently on 2 Python threads at 1 torch thread each.

``--grpo N`` (with ``par-2t``) also times N-step GRPO runs (``vs_trl.run_rlhfkit("grpo", ...)`` with the grpo-g8 setup,
its ``train_seconds``), sequential vs parallel, alternating, at 2 threads.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/decode_threads.py --reps 7 --grpo 4

Measured 2026-12-05, 2-core AMD EPYC, torch 2.13.0+cpu, main at 0890305 + the parallel path (branch
``pdecode-parallel``); ``--reps 9``, medians of generate() (32 rows, 9181 sampled tokens in all reps):

- 02:48 UTC, the quietest window (nothing else running at the start; 1-min load 0.86 -> 1.02 over
  the generate() part, the benchmark itself included): seq-2t 274 ms, seq-1t 334 ms, half-1t 250 ms,
  par-2t 345 ms. par-2t is 0.79x seq-2t (21% slower) and 0.97x seq-1t; even the no-contention best
  case, seq-2t / half-1t, is only 1.10x: half the rows cost 75-90% of all of them at one thread (a
  decode step is per-op overhead, mostly Python under the GIL), so two threads cannot overlap enough.
  GRPO (16 steps, ``--grpo 16 --grpo-reps 3``) in the same run: load rose to 3.5 as other jobs
  started, so its figures (seq-2t 7.7-10.4 s, par-2t 11.4-89 s) say nothing.
- 02:34 UTC, one other job on one core (load 1.3-1.7), a 5-rep variant: seq-2t 150-190 ms,
  seq-1t 180-215 ms, half-1t 131-133 ms, par-2t 200-254 ms: par-2t again slowest.
- With two other CPU-bound jobs (load 2.6-4), seq-2t fell apart (median 12-15 s: two OpenMP
  threads on an oversubscribed machine wait at every barrier) while seq-1t stayed at 195-310 ms and
  par-2t at 435-582 ms: a reason to benchmark on an idle machine, not one for the parallel path.

Verdict: it does not pay (slower than decoding sequentially at 2 threads, the current default), so
it is not in ``sampling.generate``; the implementation and its tests stay on branch
``pdecode-parallel`` for a re-measurement on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vs_trl  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--grpo", type=int, default=0, help="also time GRPO runs of this many steps (0: skip)")
    p.add_argument("--grpo-reps", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rlhfkit-bench"))
    args = p.parse_args()

    import torch

    from rlhfkit import sampling
    from rlhfkit.config import GenerationConfig
    from rlhfkit.data.tokenize import prompt_ids
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.train.rollout import row_generators

    paths = vs_trl.prepare(args.workdir)
    _, setup = vs_trl.setup_of("grpo-g8")
    tok = load_tokenizer(paths["model"])
    model = load_causal_lm(paths["model"], dtype=torch.float32)
    prompts = [r["prompt"] for r in vs_trl.read_jsonl(paths[setup.rl_prompts_file])]
    gen = GenerationConfig(max_new_tokens=setup.rl_new_tokens, temperature=1.0)

    def rollout(step: int):
        idx = [(step * setup.rl_prompts + k) % len(prompts) for k in range(setup.rl_prompts)]
        prompt_idx = [i for i in idx for _ in range(setup.rl_generations)]
        rows = [prompt_ids(tok, prompts[i]) for i in prompt_idx]
        return rows, row_generators(0, step, prompt_idx)

    ways = {"seq-2t": (False, 2), "seq-1t": (False, 1), "half-1t": (False, 1), "par-2t": (True, 2)}
    has_parallel = hasattr(sampling, "PARALLEL_DECODE")  # the parallel path (branch pdecode-parallel)
    if not has_parallel:
        del ways["par-2t"]

    def once(way: str, step: int) -> tuple[float, int]:
        parallel, threads = ways[way]
        sampling.PARALLEL_DECODE = parallel
        torch.set_num_threads(threads)
        rows, gens = rollout(step)
        if way == "half-1t":  # one part of the parallel path's split: 2 prompts x 8 copies
            half = len(rows) // 2
            rows, gens = rows[:half], gens[:half]
        t0 = time.perf_counter()
        out = sampling.generate(model, tok, rows, gen, generator=gens, batch_size=len(rows))
        dt = time.perf_counter() - t0
        assert torch.get_num_threads() == threads
        return dt, int(out.mask.sum())

    for way in ways:  # warm-up (fused weights, allocator, first-call costs)
        once(way, 0)
    times: dict[str, list[float]] = {w: [] for w in ways}
    tokens: dict[str, list[int]] = {w: [] for w in ways}
    load0 = os.getloadavg()
    for rep in range(args.reps):
        order = list(ways) if rep % 2 == 0 else list(ways)[::-1]
        for way in order:
            dt, n = once(way, 1 + rep)  # the same rollout for every way in a repetition
            times[way].append(dt)
            tokens[way].append(n)
    load1 = os.getloadavg()
    med = {w: statistics.median(t) for w, t in times.items()}
    print(f"generate(): 32 rows, {args.reps} reps, loadavg {load0[0]:.2f}->{load1[0]:.2f}, cores {os.cpu_count()}")
    for w in ways:
        print(f"  {w}: median {med[w] * 1000:7.1f} ms  (min {min(times[w]) * 1000:.1f}, max {max(times[w]) * 1000:.1f}),"
              f" sampled tokens {sum(tokens[w])}")
    print(f"  seq-1t / seq-2t = {med['seq-1t'] / med['seq-2t']:.3f}x   best case of 2 parts in parallel (no GIL "
          f"contention): seq-2t / half-1t = {med['seq-2t'] / med['half-1t']:.3f}x")
    if has_parallel:
        print(f"  seq-2t / par-2t = {med['seq-2t'] / med['par-2t']:.3f}x   seq-1t / par-2t = "
              f"{med['seq-1t'] / med['par-2t']:.3f}x")
    else:
        print("  par-2t: not measured (this rlhfkit has no sampling.PARALLEL_DECODE)")
    sampling.PARALLEL_DECODE = True
    torch.set_num_threads(2)

    if args.grpo and has_parallel:
        secs: dict[str, list[float]] = {"seq-2t": [], "par-2t": []}
        load0 = os.getloadavg()
        for rep in range(args.grpo_reps):
            for way in (["seq-2t", "par-2t"] if rep % 2 == 0 else ["par-2t", "seq-2t"]):
                sampling.PARALLEL_DECODE = ways[way][0]
                with tempfile.TemporaryDirectory() as out:
                    secs[way].append(vs_trl.run_rlhfkit("grpo", paths, Path(out), args.grpo, {}, setup))
                    gen_s = json.loads((Path(out) / "summary.json").read_text()).get("time_generation")
                print(f"  grpo {way}: {secs[way][-1]:.2f} s" + (f" (generation {gen_s})" if gen_s else ""), flush=True)
        load1 = os.getloadavg()
        m = {w: statistics.median(s) for w, s in secs.items()}
        print(f"GRPO grpo-g8, {args.grpo} steps x {args.grpo_reps} reps, loadavg {load0[0]:.2f}->{load1[0]:.2f}: "
              f"seq-2t {m['seq-2t']:.2f} s, par-2t {m['par-2t']:.2f} s, ratio {m['seq-2t'] / m['par-2t']:.3f}x")


if __name__ == "__main__":
    main()
