"""LoRA runs learn, on the toy world (rlhfkit.world.toy: kind reviews are preferred), from the
session's SFT model, and load only one copy of the causal LM: the reference is the policy with
its adapter switched off. Every trainer writes an adapter folder that the loaders (and, after
`merge-lora`, the Auto classes) read back with the outputs training ended on.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.merge_lora import MergeLoraConfig
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.rloo import RLOOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.sft import SFTConfig
from rlhfkit.data import load_preference
from rlhfkit.data.tokenize import collate_pairs, tokenize_preference
from rlhfkit.merge_lora import run_merge_lora
from rlhfkit.models import is_adapter_dir, load_causal_lm, load_reward_model, load_tokenizer, reward_forward
from rlhfkit.train.dpo import run_dpo
from rlhfkit.train.grpo import run_grpo
from rlhfkit.train.ppo import run_ppo
from rlhfkit.train.rloo import run_rloo
from rlhfkit.train.rm import run_rm
from rlhfkit.train.sft import run_sft
from rlhfkit.world import toy

pytestmark = pytest.mark.slow
LORA = dict(lora_r=8, lora_alpha=16)
OFFLINE = dict(batch_size=32, max_length=32, max_prompt_length=16, warmup_ratio=0.1, logging_steps=1, seed=0, **LORA)
REWARD = ["rlhfkit.world.toy:kind_reward"]


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture
def causal_lm_loads(monkeypatch):
    """Every path AutoModelForCausalLM.from_pretrained is called with during the test."""
    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counting)
    return calls


def _online(world_dir, sft_dir, out, **kw):
    return dict(model=sft_dir, data=world_dir["prompts"], output_dir=str(out), reward_fn=REWARD, max_new_tokens=12,
                batch_size=8, max_length=32, max_prompt_length=16, seed=0, **LORA, **kw)


def test_lora_dpo_learns_with_the_policy_as_its_own_reference(world_dir, sft_dir, tmp_path, causal_lm_loads):
    out = tmp_path / "dpo"
    summary = run_dpo(DPOConfig(model=sft_dir, data=world_dir["prefs"], eval_data=world_dir["prefs_eval"],
                                output_dir=str(out), max_steps=20, learning_rate=1e-3, beta=0.1, **OFFLINE))
    assert causal_lm_loads == [sft_dir]  # no second copy for the reference
    assert summary["reference"] == "policy, adapter disabled"
    acc = [r["reward_accuracy"] for r in _rows(out) if "reward_accuracy" in r]
    # step 1: the adapter starts at zero, so policy == reference and every implicit reward is 0
    assert acc[0] == 0.0 and _mean(acc[-5:]) >= 0.9, acc
    assert summary["eval_reward_accuracy"] >= 0.85
    prompts = [toy.prompt_for(i) for i in toy.ITEMS]
    sft_rate, _ = toy.kind_rate(sft_dir, prompts, 10, seed=1)
    dpo_rate, _ = toy.kind_rate(str(out), prompts, 10, seed=1)  # the adapter folder, read as base + adapter
    assert dpo_rate >= sft_rate + 0.2, (sft_rate, dpo_rate)

    assert is_adapter_dir(out) and not (out / "model.safetensors").exists()
    run_merge_lora(MergeLoraConfig(model=str(out), output_dir=str(tmp_path / "merged")))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(load_causal_lm(sft_dir), str(out)).eval()
    ids = torch.tensor([[2, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        got, want = merged(input_ids=ids).logits, unmerged(input_ids=ids).logits
        sft = load_causal_lm(sft_dir)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (want - sft).abs().max() > 1e-2


def test_lora_ppo_learns_with_one_policy_copy(world_dir, sft_dir, tmp_path, causal_lm_loads):
    out = tmp_path / "ppo"
    summary = run_ppo(PPOConfig(**_online(world_dir, sft_dir, out, num_generations=2, learning_rate=1e-3,
                                          max_steps=20)))
    assert causal_lm_loads == [sft_dir]  # the policy; the reference is it with the adapter off
    rows = _rows(out)
    assert summary["steps"] == 20
    start, end = _mean([r["reward"] for r in rows[:3]]), _mean([r["reward"] for r in rows[-5:]])
    assert start < 1.0 and end >= start + 0.5, (start, end)
    assert abs(rows[0]["kl"]) < 1e-4  # step 1: the zero-initialised adapter leaves policy == reference
    assert _mean([r["kl"] for r in rows[-5:]]) > 0.05
    assert is_adapter_dir(out) and is_adapter_dir(out / "value_model")  # the LoRA critic, with its score head
    critic = load_file(str(out / "value_model" / "adapter_model.safetensors"))
    assert any("score" in k for k in critic) and any("lora_A" in k for k in critic)


def test_lora_sft_trains_only_the_adapter(world_dir, tmp_path):
    out = tmp_path / "sft"
    run_sft(SFTConfig(model=world_dir["base"], data=world_dir["sft"], output_dir=str(out), max_steps=30,
                      learning_rate=3e-3, **OFFLINE))
    losses = [r["loss"] for r in _rows(out) if "loss" in r]
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:3]), losses
    base = load_causal_lm(world_dir["base"]).state_dict()
    merged = load_causal_lm(str(out)).state_dict()
    assert merged.keys() == base.keys()
    for k in base:  # adapted (linear) layers moved; embeddings and norms are the base's, bit for bit
        if k.endswith(("proj.weight",)):
            assert (merged[k] - base[k]).abs().max() > 1e-4, k
        else:
            assert torch.equal(merged[k], base[k]), k


def test_lora_reward_model_learns_and_its_folder_scores_as_trained(world_dir, sft_dir, tmp_path):
    out = tmp_path / "rm"
    summary = run_rm(RMConfig(model=sft_dir, data=world_dir["prefs"], eval_data=world_dir["prefs_eval"],
                              output_dir=str(out), max_steps=20, learning_rate=1e-3, **OFFLINE))
    assert summary["eval_accuracy"] >= 0.85
    assert any("score" in k for k in load_file(str(out / "adapter_model.safetensors")))  # the trained head
    tok = load_tokenizer(str(out))
    model = load_reward_model(str(out), tok).eval()
    pairs, _ = tokenize_preference(load_preference(world_dir["prefs_eval"]), tok, 32, 16)
    batch = collate_pairs(pairs, tok.pad_token_id, False)
    with torch.no_grad():
        chosen, rejected = reward_forward(model, batch["input_ids"], batch["attention_mask"]).chunk(2)
    assert float((chosen > rejected).float().mean()) == pytest.approx(summary["eval_accuracy"], abs=1e-9)


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_lora_rloo_grpo_reward_rises(world_dir, sft_dir, tmp_path, algo, causal_lm_loads):
    run, cls = {"rloo": (run_rloo, RLOOConfig), "grpo": (run_grpo, GRPOConfig)}[algo]
    run(cls(**_online(world_dir, sft_dir, tmp_path, num_generations=4, learning_rate=3e-3, max_steps=12)))
    assert causal_lm_loads == [sft_dir]
    rewards = [r["reward"] for r in _rows(tmp_path)]
    assert _mean(rewards[-4:]) >= _mean(rewards[:3]) + 0.5, rewards
    assert is_adapter_dir(tmp_path)
