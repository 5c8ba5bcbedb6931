"""Learning, not only running: SFT -> reward model -> DPO on the toy world's known preference.

The world (rlhfkit.world.toy) prefers kind food reviews. The SFT data is half kind, half unkind,
so the SFT model says either; every pair prefers the kind response. A reward model must rank
unseen pairs correctly, and DPO must make kind samples more frequent than under SFT.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.dpo import run_dpo
from rlhfkit.train.rm import run_rm
from rlhfkit.world import toy
from rlhfkit.world.toy import kind_rate

pytestmark = pytest.mark.slow
COMMON = dict(batch_size=32, max_length=32, max_prompt_length=16, warmup_ratio=0.1, logging_steps=10, seed=0)


@pytest.fixture(scope="module")
def pipeline(world_dir, sft_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    import shutil

    shutil.copytree(sft_dir, out / "sft")  # the session's SFT run (tests/conftest.py), same settings
    sft = json.loads((out / "sft" / "summary.json").read_text())
    rm = run_rm(RMConfig(model=str(out / "sft"), data=world_dir["prefs"], eval_data=world_dir["prefs_eval"],
                         output_dir=str(out / "rm"), max_steps=60, learning_rate=1e-3, eval_steps=20, **COMMON))
    dpo = run_dpo(DPOConfig(model=str(out / "sft"), data=world_dir["prefs"], eval_data=world_dir["prefs_eval"],
                            output_dir=str(out / "dpo"), max_steps=80, learning_rate=1e-4, beta=0.1,
                            precompute_ref=True, **COMMON))
    return {"dir": out, "sft": sft, "rm": rm, "dpo": dpo}


def test_reward_model_learns_the_preference(pipeline):
    rm = pipeline["rm"]
    assert rm["eval_pairs"] == 200
    assert rm["eval_accuracy"] >= 0.90
    low, high = rm["eval_accuracy_ci"]
    assert low <= rm["eval_accuracy"] <= high and low > 0.5
    # accuracy is logged from the first evaluation (step 20), not only at the end
    rows = [json.loads(x) for x in (pipeline["dir"] / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r and r["step"] == 20 for r in rows)


def test_dpo_implicit_reward_and_samples_prefer_kind(pipeline):
    dpo = pipeline["dpo"]
    assert dpo["eval_reward_accuracy"] >= 0.85
    prompts = [toy.prompt_for(i) for i in toy.ITEMS]
    sft_rate, _ = kind_rate(str(pipeline["dir"] / "sft"), prompts, 10, seed=1)
    dpo_rate, _ = kind_rate(str(pipeline["dir"] / "dpo"), prompts, 10, seed=1)
    # 200 samples each; the SFT data is half kind, so SFT sits near 0.5
    assert 0.25 <= sft_rate <= 0.75
    assert dpo_rate >= sft_rate + 0.2, (sft_rate, dpo_rate)


def test_output_folders_load_with_auto_classes(pipeline):
    root = pipeline["dir"]
    for stage in ("sft", "rm", "dpo"):
        files = {p.name for p in (root / stage).iterdir()}
        assert {"config.json", "model.safetensors", "metrics.jsonl", "summary.json", "config.yaml",
                "tokenizer.json"} <= files, stage
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), stage
    rm = AutoModelForSequenceClassification.from_pretrained(root / "rm")
    assert rm.config.num_labels == 1
    lm = AutoModelForCausalLM.from_pretrained(root / "dpo")
    with torch.no_grad():
        assert lm(torch.tensor([[2, 5, 6]])).logits.shape[-1] == lm.config.vocab_size
    summary = json.loads((root / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 80 and summary["train_seconds"] > 0
    assert {"rewards_chosen", "rewards_rejected", "margin", "reward_accuracy", "logratio", "grad_norm",
            "tokens_per_second"} <= set(summary["train"])


def test_dpo_on_conversational_data(world_dir, pipeline, tmp_path):
    """The same DPO run on chat-format pairs (rendered with the tokenizer's chat template) learns too."""
    chat = toy.write_dataset(tmp_path / "chat", seed=0, chat=True)
    out = tmp_path / "dpo_chat"
    summary = run_dpo(DPOConfig(model=str(pipeline["dir"] / "sft"), data=chat["prefs"], eval_data=chat["prefs_eval"],
                                output_dir=str(out), max_steps=40, learning_rate=1e-4, **COMMON))
    assert summary["eval_reward_accuracy"] >= 0.85
    AutoModelForCausalLM.from_pretrained(out)


def test_precompute_ref_gives_the_same_model(world_dir, pipeline, tmp_path):
    """Reference log-probs computed once up front == the reference model run alongside."""
    def dpo(out, pre):
        run_dpo(DPOConfig(model=str(pipeline["dir"] / "sft"), data=world_dir["prefs"], output_dir=str(out),
                          max_steps=3, learning_rate=1e-4, precompute_ref=pre, **COMMON))
        return AutoModelForCausalLM.from_pretrained(out).state_dict()

    a, b = dpo(tmp_path / "a", True), dpo(tmp_path / "b", False)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_padding_free_trains_like_padded_batches(world_dir, pipeline, tmp_path, stage):
    """padding_free: true (packed micro-batches) == false (padded): the same loss at every step.
    Step 1 runs on identical weights; later steps on weights the two runs updated separately."""
    from rlhfkit.train.sft import SFTConfig
    from rlhfkit.train.sft import run_sft

    def losses(out, padding_free):
        args = dict(model=str(pipeline["dir"] / "sft"), output_dir=str(out), max_steps=3, learning_rate=1e-4,
                    padding_free=padding_free, **{**COMMON, "logging_steps": 1})
        if stage == "sft":
            run_sft(SFTConfig(data=world_dir["sft"], **args))
        elif stage == "rm":
            run_rm(RMConfig(data=world_dir["prefs"], **args))
        else:
            run_dpo(DPOConfig(data=world_dir["prefs"], precompute_ref=True, **args))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    packed, padded = losses(tmp_path / "packed", True), losses(tmp_path / "padded", False)
    assert len(packed) == len(padded) == 3
    assert abs(packed[0] - padded[0]) <= 1e-5 * abs(padded[0])
    for a, b in zip(packed[1:], padded[1:]):
        assert abs(a - b) <= 1e-4 * abs(b)
