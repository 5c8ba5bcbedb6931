"""LoRA through peft: the reference of a LoRA run is the policy with its adapter switched off, and
that is bit-identical to the base model; adapter folders load as base + adapter; `rlhfkit
merge-lora` writes a folder the Auto classes load with the same outputs; config validation names
the field.

Adapters here are perturbed (random B, and a random score head for reward models) so that they
change the outputs by far more than the tolerances: a merge that dropped the adapter, or a
"disabled" adapter that still ran, fails.
"""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.logprobs import target_logprobs
from rlhfkit.parser import parse_config
from rlhfkit.train.sft import SFTConfig
from rlhfkit.models import (adapter_disabled, add_lora, is_adapter_dir, load_causal_lm, load_reward_model,
                            load_tokenizer, reward_forward, save_model)
from rlhfkit.tiny_models import make_tiny_model_dir

VOCAB = ["how is the soup ? it good bad . very fresh and tasty cold stale the tea was"]
ROWS = [[2, 7, 8, 9, 10, 11, 12, 13], [2, 14, 15, 16, 17, 0, 0, 0]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("lora") / "lm", VOCAB, seed=0)


def _batch():
    ids = torch.tensor(ROWS)
    attn = (torch.arange(8) < torch.tensor([[8], [5]])).long()
    loss_mask = attn.clone()
    loss_mask[:, :3] = 0  # the "prompt": log-probs of tokens 3.. only
    return ids, attn, loss_mask


def _perturb(model, seed: int = 1) -> None:
    """Random LoRA B matrices (peft starts them at 0, where the adapter changes nothing) and, for a
    reward model, a random trained copy of the score head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or "modules_to_save" in name):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _lora_lm(path, dropout=0.0):
    model = add_lora(load_causal_lm(path), path, r=4, alpha=8, dropout=dropout, target_modules=["all-linear"])
    _perturb(model)
    return model


def test_adapter_disabled_is_the_base_model_bit_for_bit(tiny_dir):
    """The reference of a LoRA run: every LoRA layer returns its base layer's output, so the
    log-probs equal the base model's exactly (atol 0), in eval mode even if the policy is training
    with adapter dropout; and the adapter and its trainability come back afterwards."""
    ids, attn, mask = _batch()
    base = load_causal_lm(tiny_dir).eval()
    lora = _lora_lm(tiny_dir, dropout=0.5)
    with torch.no_grad():
        want = target_logprobs(base, ids, mask, attn)
        on = target_logprobs(lora.eval(), ids, mask, attn)
        lora.train()
        trainable = sorted(n for n, p in lora.named_parameters() if p.requires_grad)
        with adapter_disabled(lora):
            assert not lora.training
            off = target_logprobs(lora, ids, mask, attn)
    assert torch.equal(off, want)
    assert (on - want).abs().max() > 1e-2  # the adapter does change the model
    assert lora.training
    assert sorted(n for n, p in lora.named_parameters() if p.requires_grad) == trainable
    assert trainable and all("lora_" in n for n in trainable)
    with adapter_disabled(base):  # a plain model runs as it is
        assert torch.equal(target_logprobs(base, ids, mask, attn), want)


def test_merge_lora_folder_loads_with_auto_class_and_matches_base_plus_adapter(tiny_dir, tmp_path):
    ids, attn, _ = _batch()
    lora = _lora_lm(tiny_dir).eval()
    adapter = tmp_path / "adapter"
    save_model(lora, load_tokenizer(tiny_dir), adapter)
    assert is_adapter_dir(adapter) and not (adapter / "model.safetensors").exists()
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "tokenizer.json").exists()

    assert main(["merge-lora", "--model", str(adapter), "--output_dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not is_adapter_dir(tmp_path / "merged")
    with torch.no_grad():
        want = lora(input_ids=ids, attention_mask=attn).logits
        got = merged(input_ids=ids, attention_mask=attn).logits
        loaded = load_causal_lm(str(adapter))(input_ids=ids, attention_mask=attn).logits  # what every stage reads
        base = load_causal_lm(tiny_dir)(input_ids=ids, attention_mask=attn).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded, want, rtol=0, atol=1e-5)
    assert (want - base).abs().max() > 1e-2


def test_merge_lora_of_a_reward_model_keeps_its_trained_head(tiny_dir, tmp_path):
    ids, attn, _ = _batch()
    tok = load_tokenizer(tiny_dir)
    torch.manual_seed(0)
    rm = add_lora(load_reward_model(tiny_dir, tok), tiny_dir, r=4, alpha=8, dropout=0.0,
                  target_modules=["all-linear"], reward=True)
    _perturb(rm)
    rm.eval()
    save_model(rm, tok, tmp_path / "adapter")
    assert main(["merge-lora", "--model", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_labels == 1
    with torch.no_grad():
        want = reward_forward(rm, ids, attn)
        got = reward_forward(merged, ids, attn)
        with adapter_disabled(rm):
            untrained = reward_forward(rm, ids, attn)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (want - untrained).abs().max() > 1e-2


def test_merge_lora_refuses_a_full_model_folder(tiny_dir, tmp_path, capsys):
    assert main(["merge-lora", "--model", tiny_dir, "--output_dir", str(tmp_path / "out")]) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err


def test_adapter_folder_with_pickle_weights_is_refused(tiny_dir, tmp_path):
    save_model(_lora_lm(tiny_dir), load_tokenizer(tiny_dir), tmp_path / "a")
    shutil.move(tmp_path / "a" / "adapter_model.safetensors", tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(OSError, match="allow_pickle"):
        load_causal_lm(str(tmp_path / "a"))


@pytest.mark.parametrize("argv, field", [
    (["--lora_r", "-1"], "'lora_r'"),
    (["--lora_r", "8", "--lora_alpha", "0"], "'lora_alpha'"),
    (["--lora_r", "8", "--lora_dropout", "1.0"], "'lora_dropout'"),
    (["--load_in_4bit", "true"], "'load_in_4bit' needs 'lora_r'"),
    (["--lora_r", "8", "--load_in_4bit", "true", "--device", "cpu"], "'load_in_4bit' needs a CUDA GPU"),
])
def test_lora_config_errors_name_the_field(argv, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(SFTConfig, ["--model", "m", "--data", "d", "--output_dir", "o", *argv])


def test_lora_fields_default_to_off_and_all_linear():
    cfg = parse_config(SFTConfig, ["--model", "m", "--data", "d", "--output_dir", "o"])
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, cfg.load_in_4bit) == (
        0, 16, 0.0, ["all-linear"], False)
    cfg = parse_config(SFTConfig, ["--model", "m", "--data", "d", "--output_dir", "o", "--lora_r", "8",
                                   "--lora_target_modules", "q_proj", "v_proj"])
    assert cfg.lora_r == 8 and cfg.lora_target_modules == ["q_proj", "v_proj"]


def test_lora_policy_and_its_reference_take_the_fast_paths(tiny_dir):
    """The online engine's packed and shared-prompt log-prob paths see through the peft wrapper,
    adapter on (the policy) and off (its reference), instead of falling back to the slow paths."""
    from rlhfkit.logprobs import packing_works, prompt_sharing_works

    lora = _lora_lm(tiny_dir)
    assert packing_works(lora) and prompt_sharing_works(lora)
    with adapter_disabled(lora):
        assert packing_works(lora) and prompt_sharing_works(lora)
