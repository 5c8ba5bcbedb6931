"""Reward sources: functions by file or module path, reward-model folders, weighted sums."""

import pytest
import torch

from rlhfkit.reward_model import RewardModelSource
from rlhfkit.rewards import FunctionSource, WeightedSum, load_function, make_reward


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


# ------------------------------------------------------------------ TRL's reward-function contract

TRL_FNS = (
    "def content_words(prompts, completions, **kwargs):\n"
    "    return [float(len(c[0]['content'].split())) for c in completions]\n"
    "def ids_and_answer(prompts, completions, completion_ids, answer, trainer_state, **kwargs):\n"
    "    return [len(ids) + 10.0 * (a in str(c)) + 100.0 * trainer_state.global_step\n"
    "            for c, ids, a in zip(completions, completion_ids, answer)]\n"
    "def only_kwargs(**kwargs):\n"
    "    seen = sorted(kwargs)\n"
    "    return [float(len(seen))] * len(kwargs['completions'])\n"
    "def sometimes_none(prompts, completions, **kwargs):\n"
    "    return [None if 'skip' in str(c) else 1.0 for c in completions]\n"
    "def picky(prompts, completions, **kwargs):\n"
    "    return [{}['missing'] if 'boom' in c else 1.0 for c in completions]\n")


@pytest.fixture
def trl_file(tmp_path):
    path = tmp_path / "trl_rewards.py"
    path.write_text(TRL_FNS)
    return path


CHAT = [[{"role": "user", "content": "how is the soup ?"}], [{"role": "user", "content": "and the tea ?"}]]


def test_conversational_completions_arrive_as_assistant_messages(trl_file):
    """TRL: with message-list prompts each completion is [{"role": "assistant", "content": text}], so
    `completion[0]["content"]` works (it raised `string indices must be integers` when texts came)."""
    src = FunctionSource(f"{trl_file}:content_words")
    assert src(CHAT, ["the soup is good .", "bad"]).tolist() == [5.0, 1.0]


def test_string_prompts_get_string_completions(trl_file, reward_file):
    assert FunctionSource(f"{reward_file}:length")(["p", "q"], ["a b", "c"]).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="content_words"):  # a string completion has no [0]['content']
        FunctionSource(f"{trl_file}:content_words")(["p"], ["a b"])


def test_completion_ids_columns_and_trainer_state_are_passed(trl_file):
    """len(ids) + 10 if the answer is in the completion + 100 * global_step:
    row 0: 3 ids, '4' in 'it is 4' -> 3 + 10 + 300 = 313;  row 1: 1 id, '6' not in 'no' -> 1 + 300 = 301."""
    from transformers import TrainerState

    src = FunctionSource(f"{trl_file}:ids_and_answer")
    got = src(CHAT, ["it is 4", "no"], completion_ids=[[5, 6, 7], [9]], answer=["4", "6"],
              trainer_state=TrainerState(global_step=3))
    assert got.tolist() == [313.0, 301.0]


def test_kwargs_only_function_gets_every_argument(trl_file):
    """prompts, completions, completion_ids, trainer_state and one column (answer): 5 keywords."""
    got = FunctionSource(f"{trl_file}:only_kwargs")(["p", "q"], ["a", "b"], completion_ids=[[1], [2]],
                                                   answer=["x", "y"])
    assert got.tolist() == [5.0, 5.0]


def test_none_is_left_out_of_the_weighted_sum(trl_file, reward_file):
    """TRL: None -> NaN, ignored by the weighted sum (nansum); a completion no source scores is NaN.
    length*0.5 + sometimes_none*2:  'a b' -> 1 + 2 = 3;  'skip c d' -> 1.5 + (None) = 1.5.
    sometimes_none alone: [1, NaN]; its logged mean leaves the None out (1.0)."""
    none = FunctionSource(f"{trl_file}:sometimes_none")
    alone = none(["p", "p"], ["a b", "skip c d"])
    assert alone[0].item() == 1.0 and torch.isnan(alone[1])
    total = WeightedSum([FunctionSource(f"{reward_file}:length"), none], [0.5, 2.0])
    assert total(["p", "p"], ["a b", "skip c d"]).tolist() == [3.0, 1.5]
    assert total.last_parts[none.name] == 1.0
    only = WeightedSum([none], [1.0])(["p", "p"], ["skip", "x"])
    assert torch.isnan(only[0]) and only[1].item() == 1.0


def test_a_raising_function_is_one_line_naming_function_file_and_example(trl_file):
    spec = f"{trl_file}:picky"
    with pytest.raises(ValueError) as err:
        FunctionSource(spec)(["p", "p", "p"], ["fine", "ok", "boom here"])
    msg = str(err.value)
    assert "\n" not in msg
    assert spec in msg and str(trl_file) in msg and "example 2" in msg and "KeyError" in msg, msg
    module = FunctionSource("rlhfkit.world.toy:kind_reward")
    with pytest.raises(ValueError, match=r"rlhfkit\.world\.toy:kind_reward .*toy\.py.*example 0"):
        module(["p"], [None])
