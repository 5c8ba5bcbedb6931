"""A judge as the reward source of RLOO, and per-source weights in `rlhfkit rm` / `dpo`."""

import json

import pytest

from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.rloo import RLOOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.world.toy import write_jsonl

from judge_support import kind_judge_reply


@pytest.mark.slow
def test_rloo_with_a_judge_reward(world_dir, sft_dir, tmp_path, fake_judge_endpoint):
    """RLOO on the toy world with an OpenAI-compatible judge endpoint (rule-based: more kind words
    win; draws go to the first slot) comparing each completion with an unkind reference. Reward =
    order-balanced P(completion wins): 1 for a kind review, 0.5 for an unkind one (a draw, which
    both-order judging turns into a tie instead of a first-slot win). The SFT model is kind about
    half the time (~0.75); the judge's reward pushes it up."""
    from rlhfkit.train.rloo import run_rloo
    from rlhfkit.world.toy import ITEMS, prompt_for

    ep = fake_judge_endpoint(kind_judge_reply)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt_for(i), "reference": f"the {i} is bad and cold ."}
                                                        for i in ITEMS])
    out = tmp_path / "rloo"
    summary = run_rloo(RLOOConfig(model=sft_dir, data=prompts, output_dir=str(out), reward_fn=[f"judge:{ep.url}"],
                                  num_generations=4, max_new_tokens=12, batch_size=8, learning_rate=5e-4, max_steps=12,
                                  max_length=32, max_prompt_length=16, seed=0))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # every completion judged in both orders; repeated (prompt, completion) pairs come from the in-memory cache
    assert summary["steps"] == 12 and 12 * 32 < ep.chat_requests <= 12 * 32 * 2
    assert all(0.5 <= r["reward"] <= 1.0 for r in rows)
    start = sum(r["reward"] for r in rows[:3]) / 3
    end = sum(r["reward"] for r in rows[-4:]) / 4
    assert start < 0.9 and end >= start + 0.08, (start, end)


def _mixed(world_dir, tmp_path):
    """The toy preferences, the first half labelled human, the second half judge:x."""
    rows = [json.loads(x) for x in open(world_dir["prefs"]).read().splitlines()][:64]
    for i, r in enumerate(rows):
        r["source"] = "human" if i < 32 else "judge:x"
    return write_jsonl(tmp_path / "mixed.jsonl", rows), rows


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_source_weights_in_rm_and_dpo(world_dir, tmp_path, stage):
    """One source with weight 0.5 normalises to weight 1: training is identical to an unweighted
    run (same loss at every step). Two sources weighted differently change the loss."""
    from rlhfkit.train.dpo import run_dpo
    from rlhfkit.train.rm import run_rm

    run, cls = (run_rm, RMConfig) if stage == "rm" else (run_dpo, DPOConfig)
    mixed, rows = _mixed(world_dir, tmp_path)
    single = write_jsonl(tmp_path / "single.jsonl", [{**r, "source": "judge:x"} for r in rows])
    common = dict(model=world_dir["base"], max_steps=3, batch_size=16, max_length=32, max_prompt_length=16,
                  learning_rate=1e-3, seed=0)

    def losses(name, data, weights):
        out = tmp_path / name
        run(cls(data=data, output_dir=str(out), source_weights=weights, **common))
        return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in x]

    plain = losses("plain", single, [])
    assert losses("one_source", single, ["judge=0.5"]) == pytest.approx(plain, abs=1e-6)
    assert losses("mixed_plain", mixed, []) != pytest.approx(losses("mixed_weighted", mixed, ["human=1", "judge=0.1"]),
                                                              abs=1e-4)
