"""TRL's option names under ``rlhfkit STAGE --config x.yaml`` (issue #17): each TRL YAML below is
first checked to be a valid TRL config by TRL's own parser (so the names are real ones), then parsed
by rlhfkit, and the resulting fields compared value by value."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from rlhfkit.config import ConfigError
from rlhfkit.config_yaml import field_names
from rlhfkit.parser import parse_config
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.rloo import RLOOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.sft import SFTConfig
from rlhfkit.trl_names import ALL, TABLE, is_trl_option, markdown_table, names_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "trl.md"

SFT_YAML = """\
model_name_or_path: models/base
dataset_name: data/sft.jsonl
output_dir: runs/sft
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
per_device_eval_batch_size: 8
num_train_epochs: 2
learning_rate: 2.0e-5
lr_scheduler_type: constant_with_warmup
warmup_steps: 5
weight_decay: 0.01
max_grad_norm: 0.5
bf16: true
gradient_checkpointing: true
logging_steps: 5
save_strategy: steps
save_steps: 50
save_total_limit: 3
seed: 7
report_to: none
max_length: 256
completion_only_loss: true
packing: false
do_train: true
push_to_hub: false
run_name: my-sft
"""

DPO_YAML = """\
model_name_or_path: models/sft
dataset_name: data/prefs.jsonl
output_dir: runs/dpo
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
num_train_epochs: 1
learning_rate: 5.0e-7
lr_scheduler_type: cosine
warmup_steps: 0.1
max_length: 512
beta: 0.2
loss_type: [ipo]
precompute_ref_log_probs: true
use_peft: true
lora_r: 8
fp16: false
bf16: false
report_to: [tensorboard]
"""

RM_YAML = """\
model_name_or_path: models/sft
dataset_name: data/prefs.jsonl
output_dir: runs/rm
per_device_train_batch_size: 8
num_train_epochs: 1
learning_rate: 1.0e-4
center_rewards_coefficient: 0.01
max_length: 384
eval_strategy: steps
eval_steps: 20
dataset_test_split: train
"""

GRPO_YAML = """\
model_name_or_path: models/sft
dataset_name: data/prompts.jsonl
output_dir: runs/grpo
per_device_train_batch_size: 8
gradient_accumulation_steps: 2
num_generations: 4
max_completion_length: 48
temperature: 0.7
top_p: 0.9
beta: 0.04
epsilon: 0.2
num_iterations: 2
scale_rewards: none
loss_type: dapo
max_steps: 100
learning_rate: 1.0e-6
"""

RLOO_YAML = """\
model_name_or_path: models/sft
dataset_name: data/prompts.jsonl
output_dir: runs/rloo
per_device_train_batch_size: 4
num_generations: 2
max_completion_length: 32
beta: 0.05
max_steps: 10
"""

# rlhfkit needs a reward source for online stages; TRL takes it in code (reward_funcs), not the YAML.
ONLINE_EXTRA = ["--reward_fn", "rlhfkit.world.toy:kind_reward"]


def trl_accepts(text: str, stage: str, tmp_path) -> None:
    """Every key of the YAML is a field of TRL's own classes for ``trl STAGE --config`` (what its
    parser's allow_extra_keys=False checks; the classes are not built: bf16 would need a GPU here)."""
    trl = pytest.importorskip("trl")
    import dataclasses

    cls = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "rm": trl.RewardConfig, "grpo": trl.GRPOConfig,
           "rloo": trl.RLOOConfig}[stage]
    names = {f.name for c in (trl.ScriptArguments, cls, trl.ModelConfig) for f in dataclasses.fields(c)}
    import yaml

    assert set(yaml.safe_load(text)) - names == set()


def rlhfkit_parse(text: str, cls, tmp_path, *extra: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(cls, ["--config", str(path), *extra])


def test_trl_sft_yaml(tmp_path, caplog):
    trl_accepts(SFT_YAML, "sft", tmp_path)
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        cfg = rlhfkit_parse(SFT_YAML, SFTConfig, tmp_path)
    got = {k: getattr(cfg, k) for k in ("model", "data", "output_dir", "batch_size", "micro_batch_size",
                                        "eval_batch_size", "epochs", "learning_rate", "lr_scheduler", "warmup_steps",
                                        "weight_decay", "max_grad_norm", "dtype", "logging_steps", "save_steps",
                                        "save_total_limit", "seed", "report_to", "max_length",
                                        "completion_only_loss", "padding_free")}
    assert got == {"model": "models/base", "data": "data/sft.jsonl", "output_dir": "runs/sft", "batch_size": 8,
                   "micro_batch_size": 4, "eval_batch_size": 8, "epochs": 2.0, "learning_rate": 2e-5,
                   "lr_scheduler": "constant", "warmup_steps": 5, "weight_decay": 0.01, "max_grad_norm": 0.5,
                   "dtype": "bfloat16", "logging_steps": 5, "save_steps": 50, "save_total_limit": 3, "seed": 7,
                   "report_to": [], "max_length": 256, "completion_only_loss": True, "padding_free": False}
    lines = [r.getMessage() for r in caplog.records]
    mapped = [x for x in lines if x.startswith("TRL names mapped:")]
    assert len(mapped) == 1
    assert "per_device_train_batch_size -> batch_size, micro_batch_size" in mapped[0]
    assert "batch_size 8, micro_batch_size 4" in mapped[0] and "num_train_epochs -> epochs" in mapped[0]
    accepted = [x for x in lines if x.startswith("TRL options accepted")]
    assert len(accepted) == 1 and all(n in accepted[0] for n in ("do_train", "push_to_hub", "run_name"))


def test_trl_dpo_yaml(tmp_path):
    trl_accepts(DPO_YAML, "dpo", tmp_path)
    cfg = rlhfkit_parse(DPO_YAML, DPOConfig, tmp_path)
    got = {k: getattr(cfg, k) for k in ("batch_size", "micro_batch_size", "warmup_ratio", "warmup_steps", "beta",
                                        "loss_type", "precompute_ref", "lora_r", "lora_alpha", "lora_dropout",
                                        "lora_target_modules", "dtype", "report_to", "lr_scheduler", "max_length")}
    assert got == {"batch_size": 8, "micro_batch_size": 2, "warmup_ratio": 0.1, "warmup_steps": 0, "beta": 0.2,
                   "loss_type": "ipo", "precompute_ref": True, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                   "lora_target_modules": ["all-linear"], "dtype": "float32", "report_to": ["tensorboard"],
                   "lr_scheduler": "cosine", "max_length": 512}


def test_trl_reward_yaml(tmp_path):
    trl_accepts(RM_YAML, "rm", tmp_path)
    cfg = rlhfkit_parse(RM_YAML, RMConfig, tmp_path) if "eval_split" in field_names(RMConfig) else None
    if cfg is None:  # this build has no eval_split field: the TRL option is named, not dropped
        with pytest.raises(ConfigError, match=r"'eval_strategy'.*no field 'eval_split'"):
            rlhfkit_parse(RM_YAML, RMConfig, tmp_path)
        cfg = rlhfkit_parse(RM_YAML.replace("eval_strategy: steps\n", ""), RMConfig, tmp_path)
        assert (cfg.eval_data, cfg.eval_steps) == ("", 20)
    else:
        assert (cfg.eval_data, cfg.eval_split, cfg.eval_steps) == ("data/prefs.jsonl", "train", 20)
    assert (cfg.batch_size, cfg.center_rewards_coef, cfg.max_length, cfg.learning_rate) == (8, 0.01, 384, 1e-4)


def test_trl_grpo_yaml_counts_prompts(tmp_path):
    """TRL's batch counts completions (8 x 2 = 16 per step); rlhfkit's counts prompts: 16 / 4 = 4."""
    trl_accepts(GRPO_YAML, "grpo", tmp_path)
    cfg = rlhfkit_parse(GRPO_YAML, GRPOConfig, tmp_path, *ONLINE_EXTRA)
    got = {k: getattr(cfg, k) for k in ("batch_size", "micro_batch_size", "num_generations", "max_new_tokens",
                                        "temperature", "top_p", "kl_coef", "cliprange", "ppo_epochs",
                                        "scale_rewards", "max_steps")}
    assert got == {"batch_size": 4, "micro_batch_size": 8, "num_generations": 4, "max_new_tokens": 48,
                   "temperature": 0.7, "top_p": 0.9, "kl_coef": 0.04, "cliprange": 0.2, "ppo_epochs": 2,
                   "scale_rewards": False, "max_steps": 100}


def test_trl_rloo_yaml(tmp_path):
    trl_accepts(RLOO_YAML, "rloo", tmp_path)
    cfg = rlhfkit_parse(RLOO_YAML, RLOOConfig, tmp_path, *ONLINE_EXTRA)
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.num_generations, cfg.max_new_tokens, cfg.kl_coef) == \
        (2, 4, 2, 32, 0.05)


def test_trl_names_on_the_command_line_override_the_file(tmp_path, monkeypatch):
    """`--per_device_train_batch_size 4` as TRL's CLI takes it; 2 processes double the global batch; a
    bare `--bf16` is true."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = rlhfkit_parse(SFT_YAML, SFTConfig, tmp_path, "--per_device_train_batch_size", "3",
                        "--gradient_accumulation_steps=5", "--num_train_epochs", "1", "--seed", "9")
    assert (cfg.batch_size, cfg.micro_batch_size, cfg.epochs, cfg.seed) == (30, 3, 1.0, 9)
    cfg = parse_config(DPOConfig, ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                                   "--bf16", "--per_device_train_batch_size", "4"])
    assert (cfg.model, cfg.data, cfg.dtype, cfg.batch_size, cfg.micro_batch_size) == ("m", "d", "bfloat16", 8, 4)


REQUIRED = "model: m\ndata: d\noutput_dir: o\n"


@pytest.mark.parametrize("text,message", [
    ("batch_size: 16\nper_device_train_batch_size: 4\n",
     "both 'batch_size' and the TRL option(s) 'per_device_train_batch_size' are set: keep one"),
    ("lr_scheduler: linear\nlr_scheduler_type: cosine\n",
     "both 'lr_scheduler' and the TRL option(s) 'lr_scheduler_type' are set: keep one"),
    ("optim: sgd\n", "unsupported TRL option 'optim' (value 'sgd'): rlhfkit uses torch AdamW; remove it or set "
     "'adamw_torch' or 'adamw_torch_fused' or 'adamw_hf' (see docs/trl.md)"),
    ("lr_scheduler_type: polynomial\n", "unsupported TRL option 'lr_scheduler_type' (value 'polynomial'): rlhfkit "
     "has linear, cosine, constant and constant_with_warmup; set one of them"),
    ("loss_type: [sigmoid, sft]\n", "unsupported TRL option 'loss_type' (value ['sigmoid', 'sft']): rlhfkit has "
     "sigmoid, ipo, robust and hinge (one loss, no list of several); set one of them"),
    ("push_to_hub: true\n", "unsupported TRL option 'push_to_hub' (value True): rlhfkit has no equivalent: accepted only when off (false or null); remove it or set false or null"),
    ("bf16: true\nfp16: true\n", "TRL options 'bf16' and 'fp16' are both true: keep one"),
    ("eval_strategy: epoch\n", "unsupported TRL option 'eval_strategy' (value 'epoch')"),
])
def test_trl_conflicts_and_unsupported_values_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(REQUIRED + text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        parse_config(DPOConfig, ["--config", str(path)])
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stage_cls,text,name", [
    (DPOConfig, "torch_compile_mode: default\n", "torch_compile_mode"),  # TrainingArguments, not in the table
    (DPOConfig, "rpo_alpha: 1.0\n", "rpo_alpha"),  # an old TRL DPO name
    (SFTConfig, "beta: 0.1\n", "beta"),  # a TRL name of another trainer
])
def test_trl_option_without_an_equivalent_is_named_as_such(tmp_path, stage_cls, text, name):
    path = tmp_path / "run.yaml"
    path.write_text(REQUIRED + text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        parse_config(stage_cls, ["--config", str(path)])
    if name == "rpo_alpha" and not is_trl_option(name):  # TRL 1.16 dropped it: an unknown field then
        assert f"unknown field {name!r}" in str(e.value)
        return
    assert f"unsupported TRL option {name!r}: rlhfkit" in str(e.value) and "docs/trl.md" in str(e.value)


def test_label_smoothing_with_sigmoid_warns(tmp_path, caplog):
    path = tmp_path / "run.yaml"
    path.write_text(REQUIRED + "per_device_train_batch_size: 2\nlabel_smoothing: 0.1\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        cfg = parse_config(DPOConfig, ["--config", str(path)])
    assert cfg.label_smoothing == 0.1
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "conservative DPO" in warn[0] and "TRL 1.16 ignores" in warn[0]


def test_native_names_stay_native(tmp_path, caplog):
    """An rlhfkit YAML whose names TRL also has (eval_steps, lora_r, loss_type) means what it did."""
    path = tmp_path / "run.yaml"
    path.write_text(REQUIRED + "eval_steps: 7\nsave_steps: 3\nlora_r: 4\nloss_type: hinge\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        cfg = parse_config(DPOConfig, ["--config", str(path)])
    assert (cfg.eval_steps, cfg.save_steps, cfg.lora_r, cfg.lora_alpha, cfg.loss_type) == (7, 3, 4, 16, "hinge")
    assert not [r for r in caplog.records if "TRL" in r.getMessage()]


def test_every_table_name_is_a_real_trl_name():
    pytest.importorskip("trl")
    legacy = {"max_seq_length", "max_prompt_length", "overwrite_output_dir", "logging_dir", "warmup_ratio"}
    assert [e.trl for e in TABLE if e.trl not in legacy and not is_trl_option(e.trl)] == []


def test_every_table_target_is_an_rlhfkit_field():
    """Except fields another change adds (data_split, eval_split, gradient_checkpointing): those are
    named in an error (or, memory-only, a note) when absent."""
    fields = set().union(*(field_names(c) for c in (SFTConfig, RMConfig, DPOConfig, GRPOConfig)))
    pending = {"data_split", "eval_split", "gradient_checkpointing"}
    targets = {t.strip() for e in TABLE for t in e.field.split(",") if t.strip()}
    assert targets - fields - pending == set()
    assert names_for("dpo")["beta"].field == "beta" and names_for("grpo")["beta"].field == "kl_coef"
    assert all(e.stages == ALL or set(e.stages) <= set(ALL) for e in TABLE)


def test_doc_table_is_the_generated_one():
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"<!-- trl-table:start -->\n(.*?)\n<!-- trl-table:end -->", text, re.S)
    assert found, "docs/trl.md lacks the generated table markers"
    assert found.group(1) == markdown_table(), "stale: regenerate it (see docs/trl.md)"
    assert len(found.group(1).splitlines()) == len(TABLE) + 2


def test_trl_defaults_documented_where_they_differ():
    """docs/trl.md lists the TRL defaults rlhfkit does not share (a TRL YAML that omits them)."""
    text = DOC.read_text(encoding="utf-8")
    for name in ("num_train_epochs", "lr_scheduler_type", "logging_steps", "max_length"):
        assert f"`{name}`" in text


def test_unsupported_trl_flag_on_the_command_line_is_named():
    with pytest.raises(ConfigError) as e:
        parse_config(DPOConfig, ["--model", "m", "--data", "d", "--output_dir", "o", "--torch_compile_mode", "x"])
    assert str(e.value).startswith("command line: unsupported TRL option 'torch_compile_mode': rlhfkit dpo has no "
                                   "equivalent")


def test_trl_dpo_yaml_runs_end_to_end(world_dir, tmp_path, caplog):
    """A TRL DPO file (IPO, per-device batch 2 x accumulation 2) through `rlhfkit dpo --config`: exit 0,
    the resolved config.yaml holds the translated fields, and the run logged the mapping."""
    import json

    from rlhfkit.cli import main

    text = (f"model_name_or_path: {world_dir['base']}\ndataset_name: {world_dir['prefs']}\n"
            f"output_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 2\n"
            "max_steps: 2\nloss_type: ipo\nbeta: 0.1\nmax_length: 64\nreport_to: none\nrun_name: x\n"
            "bf16: false\nlogging_steps: 1\n")
    path = tmp_path / "trl_dpo.yaml"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        assert main(["dpo", "--config", str(path)]) == 0
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text(encoding="utf-8"))
    assert {k: resolved[k] for k in ("batch_size", "micro_batch_size", "loss_type", "ipo_normalize_length", "dtype",
                                     "report_to", "max_steps")} == \
        {"batch_size": 4, "micro_batch_size": 2, "loss_type": "ipo", "ipo_normalize_length": True,
         "dtype": "float32", "report_to": [], "max_steps": 2}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 2
    assert any(r.getMessage().startswith("TRL names mapped: model_name_or_path -> model") for r in caplog.records)
