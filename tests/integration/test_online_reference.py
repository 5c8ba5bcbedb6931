"""At kl_coef 0 an online run loads and runs no reference model, and trains exactly as the same
run with the reference loaded (``log_kl``); every online step logs its throughput and memory."""

import json

import pytest

from rlhfkit.train.grpo import GRPOConfig, run_grpo

REWARD = ["rlhfkit.world.toy:kind_reward"]
pytestmark = pytest.mark.slow  # two 2-step GRPO runs: ~25 s on 2 cores


def _run(world_dir, out, **kw):
    cfg = GRPOConfig(model=world_dir["base"], data=world_dir["prompts"], output_dir=str(out), reward_fn=REWARD,
                     max_new_tokens=6, batch_size=2, num_generations=4, learning_rate=1e-3, max_steps=2,
                     max_length=24, max_prompt_length=12, seed=0, kl_coef=0.0, **kw)
    summary = run_grpo(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_kl_coef_zero_loads_no_reference_and_trains_alike(world_dir, tmp_path):
    bare, bare_rows = _run(world_dir, tmp_path / "bare")
    ref, ref_rows = _run(world_dir, tmp_path / "ref", log_kl=True)
    assert bare["reference_loaded"] is False and ref["reference_loaded"] is True
    from rlhfkit.models import load_causal_lm

    n_policy = sum(p.numel() for p in load_causal_lm(world_dir["base"]).parameters())
    # one model fewer held: exactly the reference's (= the policy's) parameters
    assert ref["parameters_held"] - bare["parameters_held"] == n_policy > 0
    # same seed, same samples, same update: the reference only ever entered as a 0 x KL term
    assert bare["samples"] == ref["samples"]
    for a, b in zip(bare_rows, ref_rows):
        for key in ("reward", "policy_loss", "response_length", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a, b)
    assert not {"kl", "kl_k1", "kl_k3"} & set(bare_rows[-1]) and "kl_k3" in ref_rows[-1]
    for rows, summary in ((bare_rows, bare), (ref_rows, ref)):
        for r in rows:
            # real tokens per completion row: its prompt (1 to 12 tokens) + its response, no padding
            per_row = r["tokens_per_second"] / r["samples_per_second"]
            assert r["response_length"] + 1 <= per_row <= r["response_length"] + 12, r
            assert r["peak_memory_mib"] > 10  # a Python process with torch holds far more than 10 MiB
        assert summary["tokens_per_second"] > 0 and summary["samples_per_second"] > 0
        # 2 steps x 8 completions in train_seconds
        assert summary["samples_per_second"] == pytest.approx(16 / summary["train_seconds"], rel=0.01)
