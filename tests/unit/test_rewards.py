"""Reward sources: functions by file or module path, reward-model folders, weighted sums."""

import pytest
import torch

from rlhfkit.rewards import FunctionSource, RewardModelSource, WeightedSum, load_function, make_reward


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def length(prompts, completions, **kw):\n"
        "    return [len(c.split()) for c in completions]\n"
        "def uses_column(prompts, completions, answer, **kw):\n"
        "    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]\n"
        "def short(prompts, completions, **kw):\n"
        "    return [1.0]\n"
        "def nan(prompts, completions, **kw):\n"
        "    return [float('nan')] * len(completions)\n")
    return path


def test_function_from_file_and_module(reward_file):
    src = FunctionSource(f"{reward_file}:length")
    assert src(["p", "p"], ["a b c", "a"]).tolist() == [3.0, 1.0]
    kind = FunctionSource("rlhfkit.world.toy:kind_reward")
    # kind words minus unkind words: "fresh", "tasty" (+2); "bad" (-1)
    assert kind(["p", "p"], ["the soup is fresh and tasty .", "the soup is bad"]).tolist() == [2.0, -1.0]


def test_function_file_may_define_a_dataclass(tmp_path):
    """A reward file is a module like any other: ``@dataclass`` under postponed annotations looks its
    module up in ``sys.modules`` (benchmarks/vs_trl.py, whose ``reward_len`` both sides call, has one)."""
    path = tmp_path / "with_dataclass.py"
    path.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\n\n"
                    "@dataclass\nclass Target:\n    words: int = 2\n\n"
                    "def near(prompts, completions, **kw):\n"
                    "    return [-abs(len(c.split()) - Target().words) for c in completions]\n")
    assert FunctionSource(f"{path}:near")(["p", "p"], ["a b", "a b c d"]).tolist() == [0.0, -2.0]


def test_dataset_columns_reach_the_function(reward_file):
    src = FunctionSource(f"{reward_file}:uses_column")
    assert src(["p", "q"], ["it is 4", "it is 5"], answer=["4", "6"]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("spec,match", [
    ("no_colon", "expected"), ("missing.py:f", "no such file"), ("rlhfkit.world.toy:nope", "no function"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_function(spec)


def test_bad_outputs_are_refused(reward_file):
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        FunctionSource(f"{reward_file}:short")(["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        FunctionSource(f"{reward_file}:nan")(["p"], ["a"])


def test_weighted_sum(reward_file):
    total = WeightedSum([FunctionSource(f"{reward_file}:length"), FunctionSource("rlhfkit.world.toy:kind_reward")],
                        [0.5, 2.0])
    # length 4 * 0.5 + kind 1 * 2 = 4;  length 2 * 0.5 + kind 0 * 2 = 1
    assert total(["p", "p"], ["the tea is good", "hello there"]).tolist() == [4.0, 1.0]
    assert total.last_parts[f"{reward_file}:length"] == pytest.approx(3.0)


def test_make_reward_checks_weights(reward_file):
    with pytest.raises(ValueError, match="2 values for 1"):
        make_reward("", [f"{reward_file}:length"], [1.0, 2.0], torch.device("cpu"))
    with pytest.raises(ValueError, match="no reward source"):
        make_reward("", [], [], torch.device("cpu"))


def test_reward_model_source_matches_direct_scoring(world_dir):
    """The source tokenises prompt + completion as `rlhfkit rm` does and reads the last real token."""
    from rlhfkit.data.tokenize import prompt_ids, response_ids
    from rlhfkit.models import reward_forward

    src = RewardModelSource(world_dir["base"], torch.device("cpu"))
    torch.nn.init.normal_(src.model.score.weight, std=1.0)
    prompts, completions = ["how is the soup ?", "how is the tea ?"], ["the soup is good .", "bad"]
    got = src(prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = prompt_ids(src.tokenizer, p) + response_ids(src.tokenizer, p, c)
        alone = reward_forward(src.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert got[i].item() == pytest.approx(alone.item(), abs=1e-5)
    assert got[0].item() != pytest.approx(got[1].item(), abs=1e-3)
