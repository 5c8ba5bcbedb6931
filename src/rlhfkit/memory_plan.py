"""How much GPU memory an RLHF run's models take, before activations: a planner for "will it fit".

    python -m rlhfkit.memory_plan                         # docs/training.md's tables (1B, 7B, 13B, 70B)
    python -m rlhfkit.memory_plan --params 3e9 --algo dpo --lora_r 16 --gpus 4

Bytes per parameter (Rajbhandari et al. 2020, "ZeRO", section 3.1), AdamW:

  precision  trained model: weights + gradients + optimiser state         frozen model
  mixed      2 (bf16) + 2 (bf16) + 12 (fp32 master copy, momentum, variance) = 16    2
  fp32       4 + 4 + 8 (momentum, variance)                                  = 16    4

``mixed`` is DeepSpeed's layout; rlhfkit without DeepSpeed keeps trained weights in fp32 under
bf16 autocast, which is the fp32 column's 16 bytes (frozen models in bf16, 2 bytes).

ZeRO with N GPUs divides by N, per GPU: stage 1 the optimiser state, stage 2 also the gradients,
stage 3 also the weights, frozen models' included (DeepSpeed ZeRO-3 shards those as well). Stage 0
(plain data parallel) keeps a full copy of everything on every GPU.

LoRA (rank r): the base weights are frozen (weights only, in the compute dtype) and only the
adapter trains (16 bytes per adapter parameter); the reference model is the policy with its
adapter switched off, so it costs nothing. A LoRA critic is its own frozen backbone plus adapter.

Roles per algorithm: ``sft`` policy; ``rm`` reward model (trained); ``dpo`` policy + reference
(none with ``precompute_ref`` or LoRA); ``rloo``/``grpo`` policy + reference + reward model;
``ppo`` those + a value model (a separate critic the reward model's size; ``value="shared"``: a
head on the policy, no model of its own).

Not counted: activations, logits, the KV cache of generation, temporary buffers, allocator
fragmentation and the CUDA context (~0.5-1 GB). Sizes are in GB (10^9 bytes).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

BYTES = {"mixed": (2, 2, 12, 2), "fp32": (4, 4, 8, 4)}  # weights, gradients, optimiser (trained); frozen weights
ROLES = {"sft": ("policy",), "rm": ("reward",), "dpo": ("policy", "reference"),
         "rloo": ("policy", "reference", "reward"), "grpo": ("policy", "reference", "reward"),
         "ppo": ("policy", "reference", "reward", "value")}


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder: parameters and the matrix sizes the LoRA count needs."""

    params: int
    hidden: int
    layers: int
    intermediate: int
    kv_hidden: int  # key/value projection width (< hidden with grouped-query attention)


# Llama 3.2 1B, Llama 2 7B, 13B and 70B (their config.json files)
PRESETS = {"1B": Shape(1_235_814_400, 2048, 16, 8192, 512), "7B": Shape(6_738_415_616, 4096, 32, 11008, 4096),
           "13B": Shape(13_015_864_320, 5120, 40, 13824, 5120), "70B": Shape(68_976_648_192, 8192, 80, 28672, 1024)}


def estimate_shape(params: float) -> Shape:
    """A Llama-like shape for a parameter count alone: N ~ 12 L H^2 with L ~ H / 128 (Llama 2 7B:
    H 4096, 32 layers; 13B: 5120, 40), intermediate 8H/3, no grouped-query attention."""
    hidden = max(128, round((params * 128 / 12) ** (1 / 3) / 128) * 128)
    layers = max(1, round(params / (12 * hidden ** 2)))
    return Shape(int(params), hidden, layers, round(8 * hidden / 3 / 256) * 256, hidden)


def lora_params(shape: Shape, r: int) -> int:
    """Adapter parameters with every linear layer of every block adapted (``all-linear``): each
    d_in x d_out matrix gets A (r x d_in) and B (d_out x r), r (d_in + d_out) parameters. Per block:
    q, o: 2H each; k, v: H + kv each; gate, up, down: H + I each; total r (9H + 2 kv + 3I)."""
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    return shape.layers * r * (9 * h + 2 * kv + 3 * i)


def model_bytes(params: int, trained: int, stage: int, gpus: int, precision: str) -> dict[str, float]:
    """Per-GPU bytes of one model with ``params`` parameters of which ``trained`` train (all of
    them: full fine-tuning; the adapter: LoRA, where ``params`` counts base + adapter; 0: frozen)."""
    w, g, o, frozen = BYTES[precision]
    shard = lambda s: gpus if stage >= s else 1  # noqa: E731  (ZeRO stage s shards this part)
    return {"weights": (trained * w + (params - trained) * frozen) / shard(3),
            "gradients": trained * g / shard(2), "optimizer": trained * o / shard(1)}


def plan(shape: Shape, algo: str = "ppo", lora_r: int = 0, stage: int = 0, gpus: int = 1,
         precision: str = "mixed", precompute_ref: bool = False, value: str = "separate") -> dict[str, dict]:
    """Per-GPU bytes of each model of a run, {role: {weights, gradients, optimizer}}, plus "total".
    The reward and value models are taken to be the policy's size (the usual setup)."""
    if stage not in (0, 1, 2, 3) or gpus < 1 or algo not in ROLES or precision not in BYTES:
        raise ValueError(f"stage 0-3, gpus >= 1, algo in {sorted(ROLES)}, precision in {sorted(BYTES)}")
    n, adapter = shape.params, lora_params(shape, lora_r) if lora_r else 0
    head = shape.hidden + 1  # a scalar head: trained in full, LoRA or not
    trained_model = (n + adapter, adapter or n) if lora_r else (n, n)
    out: dict[str, dict] = {}
    for role in ROLES[algo]:
        if role == "policy" or (role == "reward" and algo == "rm"):
            sizes = trained_model
        elif role == "reference":
            sizes = (0, 0) if lora_r or precompute_ref else (n, 0)
        elif role == "reward":
            sizes = (n, 0)
        else:  # value
            sizes = (head, head) if value == "shared" else (trained_model[0] + head, trained_model[1] + head)
        out[role] = model_bytes(sizes[0], sizes[1], stage, gpus, precision)
    out["total"] = {k: sum(part[k] for part in out.values()) for k in ("weights", "gradients", "optimizer")}
    return out


def total(parts: dict) -> float:
    return sum(parts["total"].values())


# --------------------------------------------------------------------------- tables


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f}" if x >= 1e8 else f"{x / 1e9:.2f}"


def breakdown_table(shape: Shape, algo: str = "ppo", lora_r: int = 16, **kw) -> str:
    """Markdown: GB per model and part, full fine-tuning vs LoRA, for one size and setting."""
    full, lora = plan(shape, algo, 0, **kw), plan(shape, algo, lora_r, **kw)
    lines = [f"| {algo.upper()}, GB per GPU | full fine-tuning | LoRA r={lora_r} |", "|---|---|---|"]
    for role in [*ROLES[algo], "total"]:
        for part in ("weights", "gradients", "optimizer"):
            if full[role][part] or lora[role][part]:
                lines.append(f"| {role} {part} | {_gb(full[role][part])} | {_gb(lora[role][part])} |")
    lines.append(f"| **all** | **{_gb(total(full))}** | **{_gb(total(lora))}** |")
    return "\n".join(lines)


def stages_table(shapes: dict[str, Shape], algo: str, gpus: int = 8, lora_r: int = 16, precision: str = "mixed",
                 extra_rows: tuple = ()) -> str:
    """Markdown: total GB per GPU for each size, full vs LoRA (and ``extra_rows``: (label, plan
    kwargs)), without ZeRO and per ZeRO stage on ``gpus`` GPUs."""
    head = [f"| {algo.upper()} (GB per GPU, {precision}) | 1 GPU or DDP | " +
            " | ".join(f"ZeRO-{s}, {gpus} GPUs" for s in (1, 2, 3)) + " |", "|---|---|---|---|---|"]
    rows = []
    for name, shape in shapes.items():
        n_adapter = lora_params(shape, lora_r)
        for label, kw in (("full", {}), *extra_rows, (f"LoRA r={lora_r} ({n_adapter / 1e6:.0f}M)", {"lora_r": lora_r})):
            cells = [_gb(total(plan(shape, algo, stage=s, gpus=1 if s == 0 else gpus, precision=precision, **kw)))
                     for s in (0, 1, 2, 3)]
            rows.append(f"| {name} {label} | " + " | ".join(cells) + " |")
    return "\n".join(head + rows)


def readme_tables() -> str:
    """The "Memory" tables of docs/training.md (tests/unit/test_memory_plan.py checks it holds these)."""
    return "\n\n".join([breakdown_table(PRESETS["7B"], "ppo"),
                        stages_table(PRESETS, "ppo"),
                        stages_table(PRESETS, "dpo", extra_rows=(("full, precompute_ref", {"precompute_ref": True}),))])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlhfkit.memory_plan", description=__doc__.split("\n")[0])
    p.add_argument("--params", type=float, default=0, help="Parameter count (e.g. 7e9) or a preset via --preset; "
                   "none: the docs/training.md tables for 1B, 7B, 13B, 70B.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="A known Llama shape instead of --params.")
    p.add_argument("--algo", default="ppo", choices=sorted(ROLES))
    p.add_argument("--lora_r", type=int, default=16, help="LoRA rank to compare full fine-tuning with.")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the ZeRO columns shard over.")
    p.add_argument("--precision", default="mixed", choices=sorted(BYTES))
    args = p.parse_args(argv)
    if not args.params and not args.preset:
        print(readme_tables())
        return
    shape = PRESETS[args.preset] if args.preset else estimate_shape(args.params)
    name = args.preset or f"{args.params / 1e9:g}B (estimated shape: {shape.layers} layers, hidden {shape.hidden})"
    print(f"{name}, {args.algo}, {args.precision}\n")
    print(breakdown_table(shape, args.algo, args.lora_r, precision=args.precision) + "\n")
    print(stages_table({name.split(" ")[0]: shape}, args.algo, args.gpus, args.lora_r, args.precision))


if __name__ == "__main__":
    main()
