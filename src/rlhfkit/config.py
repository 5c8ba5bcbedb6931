"""Typed configs, the ground floor: the field helper, the error type, the shared field groups and
the validation that walks a config's class hierarchy.

Each stage's config dataclass lives beside its run function (``train/sft.py``'s ``SFTConfig``,
...) and is built from the groups here; ``rlhfkit.stages`` lists them all. Reading YAML is
``config_yaml``; the command line is ``parser``. Field names are a public contract (see the
README): rename only with a deprecation that warns first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml


class ConfigError(ValueError):
    """A bad config file or field; the message names the file and field."""


def option(default, help: str, **kw):
    """A config field: its default, its help text (``--help``, docs/configuration.md) and metadata
    such as ``choices``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def require(cfg, *names: str) -> None:
    """The one "field X is required" check: each named field must be set (non-empty)."""
    for name in names:
        if not getattr(cfg, name):
            raise ConfigError(f"config: field {name!r} is required (set it in the YAML file or with --{name})")


def validate(cfg) -> None:
    """Check every field's ``choices``, then run each class's own ``check`` along the MRO, base first."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ConfigError(f"config: field {f.name!r}: {getattr(cfg, f.name)!r} is not one of {', '.join(choices)}")
    for klass in reversed(type(cfg).__mro__):
        check = vars(klass).get("check")
        if check is not None:
            check(cfg)


def dump_config(cfg, path: str | Path) -> None:
    """The resolved config, loadable again with ``--config``."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8")


@dataclass
class LoraConfig:
    """LoRA / QLoRA: train a low-rank adapter on frozen base weights."""

    lora_r: int = option(0, "LoRA rank (peft): > 0 trains a low-rank adapter on frozen base weights and writes an adapter "
                            "folder (`rlhfkit merge-lora` makes it a full one); the reference model is the policy with the "
                            "adapter switched off. 0 trains every weight.")
    lora_alpha: int = option(16, "LoRA scale numerator: the adapter's update is multiplied by lora_alpha / lora_r.")
    lora_dropout: float = option(0.0, "Dropout on the adapter's input while training (0: a PPO/GRPO policy's training "
                                      "log-probs then match the sampler's exactly).")
    lora_target_modules: list[str] = option(["all-linear"], "Module names (or suffixes) that get an adapter; `all-linear` "
                                                            "is every linear layer except the LM head.")
    load_in_4bit: bool = option(False, "QLoRA: hold the frozen base in 4-bit NF4 (needs lora_r > 0, a CUDA GPU and "
                                       "the bitsandbytes package).")

    def check(self) -> None:
        if self.lora_r < 0:
            raise ConfigError(f"config: field 'lora_r' must be >= 0 (0: no LoRA), got {self.lora_r}")
        if self.lora_r and self.lora_alpha <= 0:
            raise ConfigError(f"config: field 'lora_alpha' must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"config: field 'lora_dropout' must be in [0, 1), got {self.lora_dropout}")
        if self.lora_r and not self.lora_target_modules:
            raise ConfigError("config: field 'lora_target_modules' is empty: name the modules to adapt, or all-linear")
        if self.load_in_4bit:
            self._check_4bit()

    def _check_4bit(self) -> None:
        """QLoRA needs an adapter to train, a CUDA device and bitsandbytes: refuse early, naming the field."""
        import importlib.util

        import torch

        if not self.lora_r:
            raise ConfigError("config: field 'load_in_4bit' needs 'lora_r' > 0 (a 4-bit base cannot be trained itself)")
        device = getattr(self, "device", "auto")
        if not torch.cuda.is_available() or device == "cpu":
            raise ConfigError(f"config: field 'load_in_4bit' needs a CUDA GPU (device {device!r}, CUDA "
                              f"{'available' if torch.cuda.is_available() else 'not available'}); use lora_r alone on CPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("config: field 'load_in_4bit' needs the bitsandbytes package (pip install bitsandbytes)")


@dataclass
class TrainConfig(LoraConfig):
    """Fields every trainer shares."""

    model: str = option("", "Model folder or hub id to start from (required).")
    data: str = option("", "Training data: .jsonl/.json/.parquet/.csv file, a `datasets` folder, or a hub name (required).")
    eval_data: str = option("", "Held-out data in the same format; evaluated every `eval_steps` and at the end. "
                                "May be the same source as `data`: it reads `eval_split`.")
    data_split: str = option("train", "Split of `data` to read from a `datasets` folder, a folder of <split>.jsonl files "
                                      "or <split>-00000-of-00001.parquet shards, or a hub dataset (`data: SOURCE:SPLIT` "
                                      "also names it); `train` falls back to train_prefs/train_sft/train_gen "
                                      "(UltraFeedback's names). Single files have no splits.")
    eval_split: str = option("", "Split of `eval_data`; empty tries test, then validation, then test_prefs/test_sft/"
                                 "test_gen, and says which splits exist when none is there.")
    on_bad_record: str = option("skip", "A record that fails validation (chosen == rejected, a missing field, a JSONL line "
                                        "that is not JSON): skip drops it, counts it and names the first ones in the log "
                                        "and summary.json; error stops the run at it. File-level problems always stop it.",
                                choices=["skip", "error"])
    output_dir: str = option("", "Where the model folder, metrics.jsonl, summary.json, config.yaml and checkpoints/ go (required).")
    max_steps: int = option(-1, "Optimiser steps to run; -1 means `epochs` passes over the data.")
    epochs: float = option(1.0, "Passes over the training data when `max_steps` is -1.")
    batch_size: int = option(16, "Examples (pairs for RM/DPO) per optimiser step, across all processes.")
    micro_batch_size: int = option(0, "Examples per forward pass per process; 0 means `batch_size`. Accumulation is derived.")
    learning_rate: float = option(5e-5, "Peak AdamW learning rate.")
    lr_scheduler: str = option("cosine", "Decay after warm-up.", choices=["cosine", "linear", "constant"])
    warmup_ratio: float = option(0.0, "Fraction of the steps spent warming the learning rate up from 0.")
    warmup_steps: int = option(0, "Steps spent warming the learning rate up from 0; > 0 overrides warmup_ratio.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables clipping.")
    max_length: int = option(512, "Longest prompt + response in tokens; longer examples are truncated and counted.")
    max_prompt_length: int = option(256, "Longest prompt in tokens (prompts keep their end).")
    seed: int = option(0, "Seed for initialisation, data order and sampling.")
    logging_steps: int = option(1, "Write train metrics every this many steps.")
    eval_steps: int = option(0, "Evaluate every this many steps; 0 evaluates only at the end.")
    eval_batch_size: int = option(32, "Examples per forward pass during evaluation.")
    save_steps: int = option(0, "Write a checkpoint every this many steps; 0 writes none until the end.")
    save_total_limit: int = option(2, "Checkpoints kept under output_dir/checkpoints/ (oldest deleted first).")
    resume: bool = option(False, "Continue from the newest checkpoint in output_dir/checkpoints/.")
    report_to: list[str] = option([], "Extra metric sinks besides metrics.jsonl: tensorboard, wandb, mlflow.")
    device: str = option("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    dtype: str = option("auto", "Compute dtype: auto = float32 on CPU, bfloat16 on GPUs that support it.",
                        choices=["auto", "float32", "bfloat16", "float16"])
    max_bad_steps: int = option(5, "Stop after this many consecutive steps with a non-finite loss or gradient.")
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint's folder or hub repo to run.")
    allow_pickle: bool = option(False, "Allow loading pickle (.bin) weights; off because unpickling can run code.")
    gradient_checkpointing: bool = option(False, "Recompute each layer's activations in the backward pass instead of "
                                                 "keeping them (policy, PPO critic, trained reward model): on GPUs about "
                                                 "1.3x the compute (~30 percent more) for much less activation memory; "
                                                 "on CPU it only costs time. Sampling never checkpoints (it keeps its KV "
                                                 "cache).")
    fsdp: bool = option(False, "Shard the trained model's parameters, gradients and optimiser state over the processes "
                               "with FSDP2 (torch fully_shard); needs 2+ processes (torchrun / accelerate launch). "
                               "Frozen models are replicated. See docs/scaling.md.")

    def check(self) -> None:
        require(self, "model", "data", "output_dir")
        if self.batch_size < 1:
            raise ConfigError(f"config: field 'batch_size' must be >= 1, got {self.batch_size}")
        if self.micro_batch_size < 0:
            raise ConfigError(f"config: field 'micro_batch_size' must be >= 0, got {self.micro_batch_size}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.epochs <= 0):
            raise ConfigError("config: nothing to train: set 'max_steps' > 0 or 'epochs' > 0")
        if not self.data_split:
            raise ConfigError("config: field 'data_split' must not be empty (default: train)")
        if self.max_length < 2:
            raise ConfigError(f"config: field 'max_length' must be >= 2, got {self.max_length}")
        if self.warmup_steps < 0:
            raise ConfigError(f"config: field 'warmup_steps' must be >= 0, got {self.warmup_steps}")
        self._check_report_to()

    def _check_report_to(self) -> None:
        """``none`` (TRL's and transformers' default) means no extra sinks. ``all`` (transformers: every
        integration that happens to be installed) is refused: a run would start logging to services
        nobody chose, so the sinks are named instead."""
        sinks = ("tensorboard", "wandb", "mlflow")
        if [s.lower() for s in self.report_to] == ["none"]:
            self.report_to = []
        for sink in self.report_to:
            if sink == "all":
                raise ConfigError(f"config: field 'report_to': 'all' is not supported: name the sinks you want "
                                  f"({', '.join(sinks)}), or none")
            if sink not in sinks:
                raise ConfigError(f"config: field 'report_to': unknown sink {sink!r} ({', '.join(sinks)}, or none)")


@dataclass
class PaddingFreeConfig:
    """Packed micro-batches (SFT, RM, DPO)."""

    padding_free: bool = option(True, "Pack each micro-batch's sequences end to end with no padding (attention stays within "
                                      "a sequence through position-id resets): no compute on padding. Checked on the model at "
                                      "start; models that cannot pack fall back to padded batches. Preference pairs (rm, dpo) "
                                      "then compute each prompt once for both responses where the model allows it.")


@dataclass
class SourceWeightsConfig:
    """Loss weights per label source (RM, DPO)."""

    source_weights: list[str] = option([], "Loss weight per label source: `source=weight` entries (YAML: a mapping), e.g. "
                                           "human=1.0 judge=0.5; exact source, else longest prefix, else `default`, else 1. "
                                           "Rows carry `source` from `annotate export` (human) or `rlhfkit judge` (judge:NAME).")

    def check(self) -> None:
        if not self.source_weights:
            return
        from .data.sources import parse_source_weights

        try:
            parse_source_weights(self.source_weights, "config: field 'source_weights'")
        except ValueError as e:
            raise ConfigError(str(e)) from None


# list[str] fields of "key=value" entries that a YAML file may also give as a mapping
MAPPING_FIELDS = ("source_weights",)


@dataclass
class RewardSourceConfig:
    """Reward sources, shared by the online trainers and best-of-N."""

    reward_model: str = option("", "Reward-model folder (from `rlhfkit rm`) used as a reward source.")
    reward_fn: list[str] = option([], "Reward functions `path/to/file.py:name` or `module:name`, TRL 1.16 signature fn(prompts, completions, completion_ids, trainer_state, **columns) -> list[float | None]; "
                                      "or an AI judge `judge:URL_OR_FOLDER[;model=NAME][;reference=COLUMN|siblings]` (reward = P(completion beats the reference)).")
    reward_weights: list[float] = option([], "One weight per reward source (reward_model first, then reward_fn in order); default all 1.")


@dataclass
class GenerationConfig:
    """Sampling settings, shared by everything that samples from a policy."""

    max_new_tokens: int = option(64, "Longest sampled response in tokens.")
    temperature: float = option(1.0, "Sampling temperature; log-probs in the loss use the same temperature.")
    top_k: int = option(0, "Sample from the k most likely tokens only; 0 disables.")
    top_p: float = option(1.0, "Nucleus sampling threshold; 1 disables.")
    stop_strings: list[str] = option([], "Strings that end a response (besides the tokenizer's and chat template's EOS).")

    def generation_kwargs(self) -> dict:
        """These settings as keyword arguments of a sampler (``evaluate.policy.sample_policy``)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "stop_strings": list(self.stop_strings)}


@dataclass
class SamplerRunConfig(GenerationConfig):
    """A policy, a prompt file and an output folder: the frame of the sampling-only stages."""

    model: str = option("", "Policy folder or hub id to sample from (required).")
    data: str = option("", "Prompts: records with a `prompt`; other columns are carried along (required).")
    output_dir: str = option("", "Where the results, summary.json and config.yaml go (required).")
    max_prompt_length: int = option(256, "Longest prompt in tokens (prompts keep their end).")
    batch_size: int = option(64, "Sequences sampled per forward pass.")
    seed: int = option(0, "Sampling seed.")
    device: str = option("auto", "auto, cpu, cuda.")
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint's folder or hub repo to run.")

    def check(self) -> None:
        require(self, "model", "data", "output_dir")


@dataclass
class OnlineConfig(RewardSourceConfig, GenerationConfig, TrainConfig):
    """Fields shared by the online RL trainers (PPO, RLOO, GRPO): sample, score, update.

    ``batch_size`` counts prompts per step; each is sampled ``num_generations`` times.
    """

    data: str = option("", "Prompts: records with a `prompt` (string or messages); other columns reach reward functions (required).")
    learning_rate: float = option(1e-6, "Peak AdamW learning rate.")
    ref_model: str = option("", "Frozen reference for the KL penalty; empty means the starting `model`.")
    num_generations: int = option(1, "Completions sampled per prompt.")
    kl_coef: float = option(0.05, "KL penalty coefficient (initial value when adaptive).")
    kl_target: float = option(0.0, "Target KL per sequence; > 0 switches on the adaptive controller (Ziegler et al. 2019).")
    kl_horizon: int = option(10000, "Adaptive controller horizon in sequences.")
    kl_estimator: str = option("k1", "Per-token KL estimator: k1 (log-ratio), k2, k3.", choices=["k1", "k2", "k3"])
    kl_in: str = option("reward", "Apply the KL as a per-token reward penalty or as a loss term.", choices=["reward", "loss"])
    log_kl: bool = option(False, "With kl_coef 0 (and no kl_target) no reference model is loaded or run and no KL is logged; true loads it anyway to log kl, kl_k1 and kl_k3.")
    missing_eos_penalty: float = option(0.0, "Subtracted from the score of a response cut by max_new_tokens without EOS.")
    reward_clip: float = option(0.0, "Clip scores to [-c, c]; 0 disables.")
    normalize_reward: bool = option(False, "Normalise scores by a running mean and std (kept in checkpoints).")
    ppo_epochs: int = option(1, "Passes of clipped-surrogate updates over each batch of samples.")
    mini_batch_size: int = option(0, "Sequences per optimiser step within a batch of samples; 0 means all of them.")
    cliprange: float = option(0.2, "PPO policy ratio clip range.")
    share_prompts: bool = option(True, "Compute each prompt once for its `num_generations` samples in the reference and policy forward passes, where the model gives the same log-probs that way (checked at start) and it saves work.")
    heldout_reward_model: str = option("", "A second reward model scored alongside the training reward and never optimised: logged as `heldout_reward`, with a warning when the training reward rises while it falls (over-optimisation).")
    heldout_reward_fn: list[str] = option([], "Held-out reward functions (`file.py:name` or `module:name`), summed with `heldout_reward_model`; logged, never optimised.")
    overopt_window: int = option(10, "Steps per window of the over-optimisation test: the last window's mean reward vs the window before.")
    overopt_z: float = option(2.0, "Warn when the training reward rose and the held-out reward fell, each by more than this many standard errors.")

    # fewest completions per prompt: RLOO and GRPO need siblings; PPO lowers it to 1
    min_generations: ClassVar[int] = 2

    def check(self) -> None:
        if not self.reward_model and not self.reward_fn:
            raise ConfigError("config: set 'reward_model' and/or 'reward_fn': online RL needs a reward source")
        n_sources = int(bool(self.reward_model)) + len(self.reward_fn)
        if self.reward_weights and len(self.reward_weights) != n_sources:
            raise ConfigError(f"config: field 'reward_weights' has {len(self.reward_weights)} values for {n_sources} "
                              "reward sources")
        if self.num_generations < max(1, self.min_generations):
            raise ConfigError(f"config: field 'num_generations' must be >= 2 for RLOO/GRPO (>= 1 for PPO), "
                              f"got {self.num_generations}")
        if self.kl_target < 0 or self.kl_coef < 0:
            raise ConfigError("config: fields 'kl_coef' and 'kl_target' must be >= 0")
        if self.overopt_window < 2:
            raise ConfigError(f"config: field 'overopt_window' must be >= 2, got {self.overopt_window}")
        if self.max_new_tokens < 1 or self.ppo_epochs < 1:
            raise ConfigError("config: fields 'max_new_tokens' and 'ppo_epochs' must be >= 1")
