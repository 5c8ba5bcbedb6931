"""The demo world's pipeline stages: data files and simulated labels."""

import json

import pytest

from rlhfkit.world.gold import gold_score
from rlhfkit.world.stages import (SimulateAnnotatorsConfig, WorldDataConfig, run_simulate_annotators,
                                  run_world_data)
from rlhfkit.world.tasks import Prompt


def _rows(path):
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def test_world_data_files_and_unseen_eval_subjects(tmp_path):
    s = run_world_data(WorldDataConfig(output_dir=str(tmp_path), n_sft=50, train_prompts_per_category=5,
                                       eval_prompts_per_category=3, categories=["dish", "harmful"]))
    assert s["sft"] == 50 and s["prompts_train"] == 10 and s["prompts_eval"] == 18 and s["prompts_gap"] > 0
    train, held = _rows(tmp_path / "prompts_train.jsonl"), _rows(tmp_path / "prompts_eval.jsonl")
    assert {r["category"] for r in train} == {"dish", "harmful"}       # the coverage lever: only these
    assert len({r["category"] for r in held}) == 6                      # evaluation keeps every category
    assert not {r["subject"] for r in train if r["subject"]} & {r["subject"] for r in held if r["subject"]}
    assert set(_rows(tmp_path / "sft.jsonl")[0]) == {"prompt", "completion"}


def test_noiseless_annotators_follow_gold(tmp_path):
    p = Prompt("describe the soup .", "dish", "soup")
    good, rude = "the soup is warm and tasty .", "who cares about your stupid soup ."
    assert gold_score(p, good) > gold_score(p, rude)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p.record(), "response_a": a, "response_b": b}) + "\n"
                             for a, b in [(good, rude), (rude, good)] * 10))
    s = run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "out"),
                                                         temperature=0.0, flip_rate=0.0, eval_fraction=0.3))
    assert (s["train_pairs"], s["eval_pairs"], s["eval_gold_pairs"]) == (14, 6, 6)
    assert s["ceiling_accuracy"] == pytest.approx(1.0)
    for name in ("train.jsonl", "eval.jsonl", "eval_gold.jsonl"):
        assert all(r["chosen"] == good for r in _rows(tmp_path / "out" / name)), name


def test_flip_noise_lowers_the_ceiling(tmp_path):
    p = Prompt("describe the soup .", "dish", "soup")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({**p.record(), "response_a": "the soup is warm and tasty .",
                                 "response_b": "who cares about your stupid soup ."}) + "\n")
    s = run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "o"),
                                                         temperature=0.0, flip_rate=0.2, eval_fraction=1.0))
    assert s["ceiling_accuracy"] == pytest.approx(0.8)  # a perfect model agrees with 80% of the labels
