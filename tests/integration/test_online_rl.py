"""Online RL learns on a rule-based reward, reports KL, and responds to the KL levers.

Task: the toy world's SFT model reviews dishes kindly about half the time; the reward is
kind words minus unkind words (``rlhfkit.world.toy:kind_reward``). Every run starts from the
same SFT model with the same prompts.
"""

import json

import pytest

from rlhfkit.best_of_n import kl_bound, run_best_of_n
from rlhfkit.best_of_n import BestOfNConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.rloo import RLOOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.grpo import run_grpo
from rlhfkit.train.ppo import run_ppo
from rlhfkit.train.rloo import run_rloo

pytestmark = pytest.mark.slow
REWARD = ["rlhfkit.world.toy:kind_reward"]


def _common(world_dir, sft_dir, out, **kw):
    base = dict(model=sft_dir, data=world_dir["prompts"], output_dir=str(out), reward_fn=REWARD, max_new_tokens=12,
                batch_size=8, learning_rate=5e-4, max_steps=20, max_length=32, max_prompt_length=16, seed=0)
    return {**base, **kw}


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _mean(rows, key, sl):
    vals = [r[key] for r in rows[sl]]
    return sum(vals) / len(vals)


ESTIMATOR = {"ppo": "kl_k1", "rloo": "kl_k1", "grpo": "kl_k3"}  # each algorithm's default kl_estimator
RUNNERS = {
    "ppo": (run_ppo, PPOConfig, dict(num_generations=2)),
    "rloo": (run_rloo, RLOOConfig, dict(num_generations=4)),
    "grpo": (run_grpo, GRPOConfig, dict(num_generations=4)),
}


@pytest.mark.parametrize("algo", ["ppo", "rloo", "grpo"])
def test_reward_rises_with_kl_reported(world_dir, sft_dir, tmp_path, algo):
    run, cls, extra = RUNNERS[algo]
    summary = run(cls(**_common(world_dir, sft_dir, tmp_path, **extra)))
    rows = _rows(tmp_path)
    assert len(rows) == 20 and summary["steps"] == 20
    start, end = _mean(rows, "reward", slice(0, 3)), _mean(rows, "reward", slice(-5, None))
    # the SFT model scores about 0 (half kind, half unkind); a kind review scores 2
    assert start < 1.0 and end >= start + 0.5, (start, end)
    for r in rows:
        assert {"kl", "kl_k1", "kl_k3", "entropy", "clip_frac", "approx_kl", "response_length", "eos_rate",
                "time_generation", "time_scoring", "time_training", "total_reward", "non_score_reward"} <= set(r)
        assert r["kl"] == pytest.approx(r[ESTIMATOR[algo]], rel=1e-5, abs=1e-6), r  # `kl` is the configured estimator
    # step 1 samples the starting policy, which is the reference: both estimates are 0 up to rounding
    assert abs(rows[0]["kl_k1"]) < 1e-3 and abs(rows[0]["kl_k3"]) < 1e-3, rows[0]
    assert _mean(rows, "kl", slice(-5, None)) > 0.0


def test_ppo_metrics_and_critic_outputs(world_dir, sft_dir, tmp_path):
    run_ppo(PPOConfig(**_common(world_dir, sft_dir, tmp_path, max_steps=3, num_generations=2)))
    rows = _rows(tmp_path)
    assert {"value_loss", "explained_variance", "value_clip_frac"} <= set(rows[-1])
    assert (tmp_path / "value_model" / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors").exists()


def test_ppo_shared_value_head(world_dir, sft_dir, tmp_path):
    summary = run_ppo(PPOConfig(**_common(world_dir, sft_dir, tmp_path, max_steps=3, value_head="shared")))
    assert summary["steps"] == 3 and (tmp_path / "value_head.safetensors").exists()


def test_larger_kl_coef_ends_at_smaller_kl(world_dir, sft_dir, tmp_path):
    kls = {}
    for coef in (0.0, 1.0):
        out = tmp_path / f"coef{coef}"
        run_rloo(RLOOConfig(**_common(world_dir, sft_dir, out, num_generations=4, kl_coef=coef, max_steps=30,
                                            log_kl=True)))  # the reference runs at kl_coef 0 only when asked
        kls[coef] = _mean(_rows(out), "kl", slice(-5, None))
    assert kls[1.0] < 0.5 * kls[0.0], kls


def test_adaptive_controller_moves_kl_toward_target(world_dir, sft_dir, tmp_path):
    """From the same strong coefficient (1.0), the fixed run holds the KL far below a target of 3
    nats; the adaptive controller moves the coefficient with the sign of the KL error at every
    step (down after a step below target, up after one above: Ziegler et al. 2019's controller),
    and its KL ends above the fixed run's. A low coefficient can let the KL overshoot the target on
    this tiny world; the controller then pulls it back, which the sign check covers too."""
    target = 3.0
    fixed, adaptive = tmp_path / "fixed", tmp_path / "adaptive"
    run_rloo(RLOOConfig(**_common(world_dir, sft_dir, fixed, num_generations=4, kl_coef=1.0, max_steps=30)))
    run_rloo(RLOOConfig(**_common(world_dir, sft_dir, adaptive, num_generations=4, kl_coef=1.0, max_steps=30,
                                  kl_target=target, kl_horizon=64)))
    f_rows, a_rows = _rows(fixed), _rows(adaptive)
    assert all(r["kl_coef"] == 1.0 for r in f_rows)
    for prev, cur in zip(a_rows, a_rows[1:]):
        if prev["kl"] != target:
            assert (cur["kl_coef"] < prev["kl_coef"]) == (prev["kl"] < target), (prev, cur)
    assert min(r["kl_coef"] for r in a_rows) < 0.5  # KL sat below target: the coefficient fell
    f_kl, a_kl = _mean(f_rows, "kl", slice(-10, None)), _mean(a_rows, "kl", slice(-10, None))
    assert f_kl < a_kl, (f_kl, a_kl)


def test_ppo_with_a_trained_reward_model(world_dir, sft_dir, tmp_path):
    from rlhfkit.train.rm import run_rm

    rm_dir = tmp_path / "rm"
    run_rm(RMConfig(model=sft_dir, data=world_dir["prefs"], output_dir=str(rm_dir), max_steps=40, batch_size=32,
                    learning_rate=1e-3, max_length=32, max_prompt_length=16))
    out = tmp_path / "ppo"
    summary = run_ppo(PPOConfig(**_common(world_dir, sft_dir, out, reward_fn=[], reward_model=str(rm_dir),
                                          num_generations=2, max_steps=12)))
    rows = _rows(out)
    assert summary["steps"] == 12
    assert _mean(rows, "reward", slice(-4, None)) > _mean(rows, "reward", slice(0, 3))
    # the critic starts from the reward model
    assert (out / "value_model" / "config.json").exists()


def test_best_of_n(world_dir, sft_dir, tmp_path):
    summary = run_best_of_n(BestOfNConfig(model=sft_dir, data=world_dir["prompts"], output_dir=str(tmp_path), n=4,
                                          reward_fn=REWARD, max_new_tokens=12))
    assert summary["kl_bound"] == pytest.approx(0.6362944, abs=1e-6)  # ln 4 - 3/4
    assert kl_bound(1) == 0.0
    rows = [json.loads(x) for x in (tmp_path / "best_of_n.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(len(r["candidates"]) == 4 for r in rows)
    assert all(r["reward"] == max(r["rewards"]) for r in rows)
    assert summary["mean_reward_best"] > summary["mean_reward_all"] + 0.3


TRL_REWARDS = '''
import json
from pathlib import Path


def content_kind(prompts, completions, **kwargs):
    """TRL style on chat data: the text is completion[0]["content"]."""
    kind = {"good", "great", "fresh", "tasty", "lovely", "warm", "sweet", "crisp"}
    return [float(sum(w in kind for w in c[0]["content"].split())) for c in completions]


def ids_and_answer(prompts, completions, completion_ids, answer, trainer_state, **kwargs):
    """len(completion_ids); records what it was given next to this file."""
    with open(Path(__file__).with_suffix(".log"), "a") as f:
        f.write(json.dumps({"step": trainer_state.global_step, "max_steps": trainer_state.max_steps,
                            "answer": answer, "roles": [c[0]["role"] for c in completions],
                            "texts": [c[0]["content"] for c in completions], "ids": completion_ids}) + "\\n")
    return [float(len(ids)) for ids in completion_ids]
'''


def test_grpo_with_trl_reward_functions_on_chat_prompts(world_dir, tmp_path):
    """GRPO on conversational prompts with an `answer` column and two TRL-style reward functions: one
    reads completion[0]["content"], one takes completion_ids, answer and trainer_state. Each
    function's logged mean is what it must be: ids_and_answer's is the mean response length."""
    from rlhfkit.world import toy

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": toy.prompt_for(item)}], "answer": item} for item in toy.ITEMS[:8]]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fns = tmp_path / "trl_rewards.py"
    fns.write_text(TRL_REWARDS)
    out = tmp_path / "grpo"
    tok = __import__("rlhfkit.models", fromlist=["load_tokenizer"]).load_tokenizer(world_dir["base"])
    run_grpo(GRPOConfig(model=world_dir["base"], data=str(prompts), output_dir=str(out), max_steps=3, batch_size=4,
                        num_generations=2, max_new_tokens=6, max_length=32, max_prompt_length=16, learning_rate=1e-4,
                        reward_fn=[f"{fns}:content_kind", f"{fns}:ids_and_answer"], seed=0))
    metrics = _rows(out)
    assert len(metrics) == 3
    for r in metrics:
        assert r[f"reward/{fns}:ids_and_answer"] == pytest.approx(r["response_length"], abs=1e-6)
        assert f"reward/{fns}:content_kind" in r and r["unscored"] == 0.0
    calls = [json.loads(x) for x in fns.with_suffix(".log").read_text().splitlines()]
    assert [c["step"] for c in calls] == [0, 1, 2] and all(c["max_steps"] == 3 for c in calls)
    items = {r["answer"] for r in rows}
    for c in calls:
        assert len(c["answer"]) == 8 and set(c["answer"]) <= items
        assert c["answer"][0::2] == c["answer"][1::2]  # num_generations=2: each prompt's answer twice
        assert set(c["roles"]) == {"assistant"}
        for text, ids in zip(c["texts"], c["ids"]):
            assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_completions_no_function_scores_train_without_nan(world_dir, tmp_path, algo):
    """A function returning None for every 4th completion: 1/4 logged as `unscored`, and the run's
    losses, gradients and rewards stay finite (those completions get advantage 0)."""
    fns = tmp_path / "none_rewards.py"
    fns.write_text("def every_4th_none(prompts, completions, **kwargs):\n"
                   "    return [None if i % 4 == 0 else float(len(c.split())) for i, c in enumerate(completions)]\n")
    run, cls, _ = RUNNERS[algo]
    out = tmp_path / algo
    run(cls(model=world_dir["base"], data=world_dir["prompts"], output_dir=str(out), max_steps=2, batch_size=4,
            num_generations=2, max_new_tokens=6, max_length=32, max_prompt_length=16, learning_rate=1e-4,
            reward_fn=[f"{fns}:every_4th_none"], seed=0))
    for r in _rows(out):
        assert r["unscored"] == 0.25
        for key in ("reward", "total_reward", "loss", "grad_norm", "policy_loss"):
            assert r[key] == r[key] and abs(r[key]) != float("inf"), (key, r)
