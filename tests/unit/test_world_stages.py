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


def test_validation_demonstrations_use_validation_prompts_only(tmp_path):
    """sft_val.jsonl (the SFT stage's eval loss, which picks the demo's SFT learning rate) holds
    demonstrations on validation prompts: none of them is a training or held-out prompt."""
    s = run_world_data(WorldDataConfig(output_dir=str(tmp_path), n_sft=60, n_sft_val=30, train_prompts_per_category=4,
                                       eval_prompts_per_category=4, val_prompts_per_category=4))
    val_demos = _rows(tmp_path / "sft_val.jsonl")
    assert s["sft_val"] == len(val_demos) == 30 and set(val_demos[0]) == {"prompt", "completion"}
    from rlhfkit.world.tasks import prompt_pool
    texts = {split: {p.text for c in ("dish", "arithmetic", "fact", "advice", "harmful", "rude")
                     for p in prompt_pool(c, split)} for split in ("train", "val", "eval")}
    assert {r["prompt"] for r in val_demos} <= texts["val"]
    assert not {r["prompt"] for r in _rows(tmp_path / "sft.jsonl")} & texts["val"]


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


def test_excluded_categories_leave_no_pairs_and_are_counted(tmp_path):
    dish, rude = Prompt("describe the soup .", "dish", "soup"), Prompt("you are useless .", "rude", "")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p.record(), "response_a": a, "response_b": b}) + "\n" for p, a, b in
                             [(dish, "the soup is warm .", "who cares .")] * 6 + [(rude, "sorry .", "you idiot .")] * 4))
    s = run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "o"),
                                                         temperature=0.0, exclude_categories=["rude"]))
    assert s["excluded_pairs"] == 4 and s["train_pairs"] + s["eval_pairs"] == 6
    assert all(r["category"] == "dish" for name in ("train.jsonl", "eval.jsonl") for r in _rows(tmp_path / "o" / name))
    with pytest.raises(ValueError, match="no pairs left"):
        run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "x"),
                                                         exclude_categories=["rude", "dish"]))


def test_label_gold_agreement_counts_only_untied_pairs(tmp_path):
    p = Prompt("describe the soup .", "dish", "soup")
    good, bad, also_bad = "the soup is warm and tasty .", "who cares about your stupid soup .", "you idiot ."
    assert gold_score(p, bad) != gold_score(p, also_bad)
    rows = [(good, bad)] * 8 + [(bad, good)] * 2  # flip_rate 1 below: every label is the worse one
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p.record(), "response_a": a, "response_b": b}) + "\n" for a, b in rows))
    s = run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "o"),
                                                         temperature=0.0, flip_rate=1.0, eval_fraction=0.1))
    assert s["label_gold_agreement"] == 0.0
    s = run_simulate_annotators(SimulateAnnotatorsConfig(data=str(pairs), output_dir=str(tmp_path / "o2"),
                                                         temperature=0.0, flip_rate=0.0, eval_fraction=0.1))
    assert s["label_gold_agreement"] == 1.0


def test_idk_pairs_prefer_not_knowing_to_each_distinct_wrong_training_answer(tmp_path):
    fact = Prompt("what is the capital of norland ?", "fact", "norland", "velmar")
    dish = Prompt("describe the soup .", "dish", "soup")
    pairs = tmp_path / "pairs.jsonl"
    rows = ([(fact, "the capital of norland is ostra .", "the capital of norland is velmar .")] * 5 +
            [(fact, "the capital of norland is brella .", "the capital of norland is ostra .")] * 3 +
            [(dish, "the soup is warm and creamy .", "who cares .")] * 4)
    pairs.write_text("".join(json.dumps({**p.record(), "response_a": a, "response_b": b}) + "\n" for p, a, b in rows))
    cfg = dict(data=str(pairs), temperature=0.0, eval_fraction=0.25)
    plain = run_simulate_annotators(SimulateAnnotatorsConfig(output_dir=str(tmp_path / "a"), **cfg))
    s = run_simulate_annotators(SimulateAnnotatorsConfig(output_dir=str(tmp_path / "b"), idk_pairs=True, **cfg))
    train = _rows(tmp_path / "b" / "train.jsonl")
    idk = [r for r in train if r["source"] == "idk"]
    # 12 rows, 3 held out (the same 3: same seed); the wrong answers among the 9 training rows' responses
    held = {(r["chosen"], r["rejected"]) for r in _rows(tmp_path / "a" / "eval.jsonl")}
    assert _rows(tmp_path / "b" / "eval.jsonl") == _rows(tmp_path / "a" / "eval.jsonl") and len(held) >= 1
    wrong = {t for r in _rows(tmp_path / "a" / "train.jsonl") for t in (r["chosen"], r["rejected"])
             if "ostra" in t or "brella" in t}
    assert s["idk_pairs"] == len(idk) == len(wrong) and {r["rejected"] for r in idk} == wrong
    for r in idk:
        assert r["prompt"] == fact.text and gold_score(fact, r["chosen"]) == 1.5  # on topic +1, "not sure" +0.5
    assert s["train_pairs"] == plain["train_pairs"] + len(idk)
    assert s["label_gold_agreement"] == plain["label_gold_agreement"]  # annotator labels only
