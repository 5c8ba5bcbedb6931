"""Typed configs: one dataclass per stage, loaded from YAML with command-line overrides.

``rlhfkit STAGE --config FILE.yaml --field value``: the YAML file sets the defaults, then
`transformers`' ``HfArgumentParser`` parses the command line over them, so ``--help`` lists every
field with its default and help text. Field names are a public contract (see the README):
rename only with a deprecation that warns first.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .trl_names import TrlNameError, is_trl_option, names_for
from .trl_names import suggestions as trl_suggestions
from .trl_names import translate as translate_trl


class ConfigError(ValueError):
    """A bad config file or field; the message names the file and field."""


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Fields every trainer shares."""

    model: str = _f("", "Model folder or hub id to start from (required).")
    data: str = _f("", "Training data: .jsonl/.json/.parquet/.csv file, a `datasets` folder, or a hub name (required).")
    eval_data: str = _f("", "Held-out data in the same format; evaluated every `eval_steps` and at the end. "
                            "May be the same source as `data`: it reads `eval_split`.")
    data_split: str = _f("train", "Split of `data` to read from a `datasets` folder, a folder of <split>.jsonl files "
                                  "or <split>-00000-of-00001.parquet shards, or a hub dataset (`data: SOURCE:SPLIT` "
                                  "also names it); `train` falls back to train_prefs/train_sft/train_gen "
                                  "(UltraFeedback's names). Single files have no splits.")
    eval_split: str = _f("", "Split of `eval_data`; empty tries test, then validation, then test_prefs/test_sft/"
                             "test_gen, and says which splits exist when none is there.")
    on_bad_record: str = _f("skip", "A record that fails validation (chosen == rejected, a missing field, a JSONL line "
                                    "that is not JSON): skip drops it, counts it and names the first ones in the log "
                                    "and summary.json; error stops the run at it. File-level problems always stop it.",
                            choices=["skip", "error"])
    output_dir: str = _f("", "Where the model folder, metrics.jsonl, summary.json, config.yaml and checkpoints/ go (required).")
    max_steps: int = _f(-1, "Optimiser steps to run; -1 means `epochs` passes over the data.")
    epochs: float = _f(1.0, "Passes over the training data when `max_steps` is -1.")
    batch_size: int = _f(16, "Examples (pairs for RM/DPO) per optimiser step, across all processes.")
    micro_batch_size: int = _f(0, "Examples per forward pass per process; 0 means `batch_size`. Accumulation is derived.")
    learning_rate: float = _f(5e-5, "Peak AdamW learning rate.")
    lr_scheduler: str = _f("cosine", "Decay after warm-up.", choices=["cosine", "linear", "constant"])
    warmup_ratio: float = _f(0.0, "Fraction of the steps spent warming the learning rate up from 0.")
    warmup_steps: int = _f(0, "Steps spent warming the learning rate up from 0; > 0 overrides warmup_ratio.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.")
    max_length: int = _f(512, "Longest prompt + response in tokens; longer examples are truncated and counted.")
    max_prompt_length: int = _f(256, "Longest prompt in tokens (prompts keep their end).")
    seed: int = _f(0, "Seed for initialisation, data order and sampling.")
    logging_steps: int = _f(1, "Write train metrics every this many steps.")
    eval_steps: int = _f(0, "Evaluate every this many steps; 0 evaluates only at the end.")
    eval_batch_size: int = _f(32, "Examples per forward pass during evaluation.")
    save_steps: int = _f(0, "Write a checkpoint every this many steps; 0 writes none until the end.")
    save_total_limit: int = _f(2, "Checkpoints kept under output_dir/checkpoints/ (oldest deleted first).")
    resume: bool = _f(False, "Continue from the newest checkpoint in output_dir/checkpoints/.")
    report_to: list[str] = _f([], "Extra metric sinks besides metrics.jsonl: tensorboard, wandb, mlflow.")
    device: str = _f("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    dtype: str = _f("auto", "Compute dtype: auto = float32 on CPU, bfloat16 on GPUs that support it.",
                    choices=["auto", "float32", "bfloat16", "float16"])
    max_bad_steps: int = _f(5, "Stop after this many consecutive steps with a non-finite loss or gradient.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's folder or hub repo to run.")
    allow_pickle: bool = _f(False, "Allow loading pickle (.bin) weights; off because unpickling can run code.")
    lora_r: int = _f(0, "LoRA rank (peft): > 0 trains a low-rank adapter on frozen base weights and writes an adapter "
                        "folder (`rlhfkit merge-lora` makes it a full one); the reference model is the policy with the "
                        "adapter switched off. 0 trains every weight.")
    lora_alpha: int = _f(16, "LoRA scale numerator: the adapter's update is multiplied by lora_alpha / lora_r.")
    lora_dropout: float = _f(0.0, "Dropout on the adapter's input while training (0: a PPO/GRPO policy's training "
                                  "log-probs then match the sampler's exactly).")
    lora_target_modules: list[str] = _f(["all-linear"], "Module names (or suffixes) that get an adapter; `all-linear` "
                                                        "is every linear layer except the LM head.")
    load_in_4bit: bool = _f(False, "QLoRA: hold the frozen base in 4-bit NF4 (needs lora_r > 0, a CUDA GPU and "
                                   "the bitsandbytes package).")
    gradient_checkpointing: bool = _f(False, "Recompute each layer's activations in the backward pass instead of "
                                             "keeping them (policy, PPO critic, trained reward model): on GPUs about "
                                             "1.3x the compute (~30 percent more) for much less activation memory; "
                                             "on CPU it only costs time. Sampling never checkpoints (it keeps its KV "
                                             "cache).")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on {prompt, completion}, {messages} or {text} records."""

    completion_only_loss: bool = _f(True, "Train only on response tokens (prompt tokens masked out).")
    padding_free: bool = _f(True, "Pack each micro-batch's sequences end to end with no padding (attention stays within "
                                  "a sequence through position-id resets): no compute on padding. Checked on the model at "
                                  "start; models that cannot pack fall back to padded batches.")


@dataclass
class RMConfig(TrainConfig):
    """Bradley-Terry reward model on {prompt, chosen, rejected} pairs."""

    learning_rate: float = _f(1e-4, "Peak AdamW learning rate.")
    use_margin: bool = _f(True, "Subtract a pair's `margin` field in the loss (Llama 2 eq. 2) when present.")
    margin_from_scores: bool = _f(False, "A pair without `margin` takes score_chosen - score_rejected as its margin "
                                         "(UltraFeedback's columns; a record lacking them is a bad record); used as is, "
                                         "so mind the scale (UltraFeedback's scores run 1-10).")
    center_rewards_coef: float = _f(0.0, "Weight of mean((r_c + r_r)^2), which keeps rewards centred on 0.")
    padding_free: bool = _f(True, "Pack each micro-batch's sequences end to end with no padding (attention stays within "
                                  "a sequence through position-id resets): no compute on padding. Checked on the model at "
                                  "start; models that cannot pack fall back to padded batches.")
    source_weights: list[str] = _f([], "Loss weight per label source: `source=weight` entries (YAML: a mapping), e.g. "
                                       "human=1.0 judge=0.5; exact source, else longest prefix, else `default`, else 1. "
                                       "Rows carry `source` from `annotate export` (human) or `rlhfkit judge` (judge:NAME).")


@dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimisation (and IPO, robust DPO, hinge) on {prompt, chosen, rejected} pairs."""

    learning_rate: float = _f(1e-6, "Peak AdamW learning rate.")
    ref_model: str = _f("", "Reference model folder; empty means the starting `model`.")
    beta: float = _f(0.1, "Strength of the implicit KL to the reference (DPO's beta).")
    loss_type: str = _f("sigmoid", "sigmoid = DPO, ipo, robust = rDPO, hinge = SLiC.",
                        choices=["sigmoid", "ipo", "robust", "hinge"])
    label_smoothing: float = _f(0.0, "Assumed label-flip rate: cDPO for sigmoid, rDPO's epsilon for robust (TRL 1.16 "
                                     "ignores it for sigmoid; rlhfkit applies it: see docs/trl.md).")
    ipo_normalize_length: bool = _f(True, "IPO: divide each response's log-ratio by its token count before Azar et al. "
                                          "eq. 17 (as TRL does; the IPO authors' results use this form). False: eq. 17 "
                                          "on summed log-ratios, whose gradient grows with response length.")
    precompute_ref: bool = _f(False, "Compute reference log-probs once before training and free the reference model.")
    padding_free: bool = _f(True, "Pack each micro-batch's sequences end to end with no padding (attention stays within "
                                  "a sequence through position-id resets): no compute on padding. Checked on the model at "
                                  "start; models that cannot pack fall back to padded batches.")
    source_weights: list[str] = _f([], "Loss weight per label source: `source=weight` entries (YAML: a mapping), e.g. "
                                       "human=1.0 judge=0.5; exact source, else longest prefix, else `default`, else 1. "
                                       "Rows carry `source` from `annotate export` (human) or `rlhfkit judge` (judge:NAME).")


@dataclass
class RewardSourceConfig:
    """Reward sources, shared by the online trainers and best-of-N."""

    reward_model: str = _f("", "Reward-model folder (from `rlhfkit rm`) used as a reward source.")
    reward_fn: list[str] = _f([], "Reward functions `path/to/file.py:name` or `module:name`, TRL 1.16 signature fn(prompts, completions, completion_ids, trainer_state, **columns) -> list[float | None]; "
                                  "or an AI judge `judge:URL_OR_FOLDER[;model=NAME][;reference=COLUMN|siblings]` (reward = P(completion beats the reference)).")
    reward_weights: list[float] = _f([], "One weight per reward source (reward_model first, then reward_fn in order); default all 1.")


@dataclass
class GenerationConfig:
    """Sampling settings, shared by everything that samples from a policy."""

    max_new_tokens: int = _f(64, "Longest sampled response in tokens.")
    temperature: float = _f(1.0, "Sampling temperature; log-probs in the loss use the same temperature.")
    top_k: int = _f(0, "Sample from the k most likely tokens only; 0 disables.")
    top_p: float = _f(1.0, "Nucleus sampling threshold; 1 disables.")
    stop_strings: list[str] = _f([], "Strings that end a response (besides the tokenizer's and chat template's EOS).")


@dataclass
class SamplerRunConfig(GenerationConfig):
    """A policy, a prompt file and an output folder: the frame of the sampling-only stages."""

    model: str = _f("", "Policy folder or hub id to sample from (required).")
    data: str = _f("", "Prompts: records with a `prompt`; other columns are carried along (required).")
    output_dir: str = _f("", "Where the results, summary.json and config.yaml go (required).")
    max_prompt_length: int = _f(256, "Longest prompt in tokens (prompts keep their end).")
    batch_size: int = _f(64, "Sequences sampled per forward pass.")
    seed: int = _f(0, "Sampling seed.")
    device: str = _f("auto", "auto, cpu, cuda.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's folder or hub repo to run.")


@dataclass
class OnlineConfig(RewardSourceConfig, GenerationConfig, TrainConfig):
    """Fields shared by the online RL trainers (PPO, RLOO, GRPO): sample, score, update.

    ``batch_size`` counts prompts per step; each is sampled ``num_generations`` times.
    """

    data: str = _f("", "Prompts: records with a `prompt` (string or messages); other columns reach reward functions (required).")
    learning_rate: float = _f(1e-6, "Peak AdamW learning rate.")
    ref_model: str = _f("", "Frozen reference for the KL penalty; empty means the starting `model`.")
    num_generations: int = _f(1, "Completions sampled per prompt.")
    kl_coef: float = _f(0.05, "KL penalty coefficient (initial value when adaptive).")
    kl_target: float = _f(0.0, "Target KL per sequence; > 0 switches on the adaptive controller (Ziegler et al. 2019).")
    kl_horizon: int = _f(10000, "Adaptive controller horizon in sequences.")
    kl_estimator: str = _f("k1", "Per-token KL estimator: k1 (log-ratio), k2, k3.", choices=["k1", "k2", "k3"])
    kl_in: str = _f("reward", "Apply the KL as a per-token reward penalty or as a loss term.", choices=["reward", "loss"])
    missing_eos_penalty: float = _f(0.0, "Subtracted from the score of a response cut by max_new_tokens without EOS.")
    reward_clip: float = _f(0.0, "Clip scores to [-c, c]; 0 disables.")
    normalize_reward: bool = _f(False, "Normalise scores by a running mean and std (kept in checkpoints).")
    ppo_epochs: int = _f(1, "Passes of clipped-surrogate updates over each batch of samples.")
    mini_batch_size: int = _f(0, "Sequences per optimiser step within a batch of samples; 0 means all of them.")
    cliprange: float = _f(0.2, "PPO policy ratio clip range.")
    share_prompts: bool = _f(True, "Compute each prompt once for its `num_generations` samples in the reference and policy forward passes, where the model gives the same log-probs that way (checked at start) and it saves work.")
    heldout_reward_model: str = _f("", "A second reward model scored alongside the training reward and never optimised: logged as `heldout_reward`, with a warning when the training reward rises while it falls (over-optimisation).")
    heldout_reward_fn: list[str] = _f([], "Held-out reward functions (`file.py:name` or `module:name`), summed with `heldout_reward_model`; logged, never optimised.")
    overopt_window: int = _f(10, "Steps per window of the over-optimisation test: the last window's mean reward vs the window before.")
    overopt_z: float = _f(2.0, "Warn when the training reward rose and the held-out reward fell, each by more than this many standard errors.")


@dataclass
class PPOConfig(OnlineConfig):
    """PPO with a learned critic (Ouyang et al. 2022; Huang et al. 2024, "The N+ implementation details of RLHF with PPO")."""

    ppo_epochs: int = _f(4, "Passes of clipped-surrogate updates over each batch of samples.")
    value_model: str = _f("", "Critic initialisation: a folder; empty means `reward_model` if set, else the policy.")
    value_head: str = _f("separate", "separate: a critic network of its own; shared: a value head on the policy's backbone.",
                         choices=["separate", "shared"])
    gamma: float = _f(1.0, "Discount factor.")
    lam: float = _f(0.95, "GAE lambda.")
    cliprange_value: float = _f(0.2, "Value clip range.")
    vf_coef: float = _f(0.1, "Weight of the value loss.")
    whiten_advantages: bool = _f(True, "Whiten advantages over each batch of samples.")


@dataclass
class RLOOConfig(OnlineConfig):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each completion's baseline is its siblings' mean reward."""

    num_generations: int = _f(4, "Completions sampled per prompt (>= 2: the siblings are the baseline).")


@dataclass
class GRPOConfig(OnlineConfig):
    """Group relative policy optimisation (Shao et al. 2024): group-normalised rewards, KL in the loss."""

    num_generations: int = _f(4, "Completions sampled per prompt (>= 2).")
    kl_estimator: str = _f("k3", "Per-token KL estimator: k1, k2, k3.", choices=["k1", "k2", "k3"])
    kl_in: str = _f("loss", "Apply the KL as a per-token reward penalty or as a loss term.", choices=["reward", "loss"])
    kl_coef: float = _f(0.04, "KL penalty coefficient (GRPO's beta).")
    scale_rewards: bool = _f(True, "Divide by the group's std (False: Dr. GRPO's unscaled advantages).")


@dataclass
class BestOfNConfig(RewardSourceConfig, SamplerRunConfig):
    """Sample N completions per prompt, keep the best by a reward source (rejection sampling)."""

    n: int = _f(4, "Completions sampled per prompt.")


@dataclass
class SamplePairsConfig(SamplerRunConfig):
    """Sample k responses per prompt from a policy and write them as pairs to compare."""

    k: int = _f(2, "Responses sampled per prompt (even); written as k/2 pairs {prompt, response_a, response_b}.")


@dataclass
class JudgeConfig:
    """Label pairs with an AI judge (RLAIF): both orders, bias statistics, TRL preference rows out."""

    data: str = _f("", "Pairs {prompt, response_a, response_b} (what `sample-pairs` writes), or {prompt, chosen, rejected} "
                       "rows (judged as a=chosen; agreement with that human label is reported); an optional `label` "
                       "or `gold` field (a, b or tie) is a human label (required).")
    judge: str = _f("", "The judge: an OpenAI-compatible `http(s)://HOST/v1` URL, a reward-model folder, or a causal-LM folder (required).")
    judge_model: str = _f("", "Model name the endpoint serves; empty means the first one it lists.")
    constitution: str = _f("", "YAML file of principles; empty means the shipped default (helpful, honest, harmless).")
    output: str = _f("", "Preference JSONL to write ({prompt, chosen, rejected, confidence, source, ...}); "
                         "the run's statistics go beside it as OUTPUT.summary.json (required).")
    output_dir: str = _f("", "Folder form (what `rlhfkit pipeline` sets): with `output` empty, rows go to OUTPUT_DIR/prefs.jsonl.")
    ties: str = _f("drop", "Pairs whose two orders disagree: drop them (counted), or keep them in the output as "
                           "{prompt, response_a, response_b, tie: true, confidence: 0.5} rows.", choices=["drop", "keep"])
    name: str = _f("", "Source name written as `source: judge:NAME`; empty means the judge model's name.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the endpoint's API key (\"EMPTY\" when unset).")
    timeout: float = _f(60.0, "Seconds per endpoint request before it counts as failed (and is retried).")
    max_retries: int = _f(4, "Retries per request on timeouts, connection errors, 429 and 5xx (exponential backoff with jitter).")
    concurrency: int = _f(8, "Endpoint requests in flight at once.")
    cache: str = _f("", "Verdict cache (JSONL) for endpoint judges; empty means OUTPUT.cache.jsonl; `none` disables it.")
    logprobs: bool = _f(False, "Ask the endpoint for log-probs of the answer token (graded confidence); off: the letter counts as 1.0.")
    batch_size: int = _f(8, "Pairs per forward pass for local judges.")
    device: str = _f("auto", "auto, cpu, cuda (local judges).")
    trust_remote_code: bool = _f(False, "Allow model code from the judge's folder to run.")


@dataclass
class MergeLoraConfig:
    """Merge a LoRA adapter folder into its base model and write a full Hugging Face folder."""

    model: str = _f("", "Adapter folder a LoRA run wrote (adapter_config.json, adapter_model.safetensors) (required).")
    output_dir: str = _f("", "Where the merged model folder (config.json, model.safetensors, tokenizer) goes (required).")
    dtype: str = _f("float32", "Dtype of the merged weights.", choices=["float32", "bfloat16", "float16"])
    trust_remote_code: bool = _f(False, "Allow model code from the base model's folder or hub repo to run.")
    allow_pickle: bool = _f(False, "Allow pickle adapter/base weights; off because unpickling can run code.")


@dataclass
class ServeConfig:
    """Serve a policy through an OpenAI-compatible API, behind optional input/output filters."""

    model: str = _f("", "Model folder to serve (required).")
    host: str = _f("127.0.0.1", "Interface to listen on (0.0.0.0 for every interface; put TLS in front).")
    port: int = _f(8000, "Port to listen on.")
    guard: str = _f("", "Guard YAML with `input` / `output` sections (blocklist, classifier) and a `refusal`; empty: no filters.")
    served_model_name: str = _f("", "Model id clients pass and /v1/models lists; empty means the folder's name.")
    max_tokens_limit: int = _f(1024, "Largest max_tokens a request may ask for.")
    device: str = _f("auto", "auto, cpu, cuda.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's folder to run.")
    api_key: str = _f("", "Require 'Authorization: Bearer KEY' on every /v1 route; empty: $RLHFKIT_API_KEY, else no key.")
    max_request_bytes: int = _f(0, "Largest request body in bytes (413 beyond); 0: max(1 MiB, 4 x context x 32).")


# list[str] fields of "key=value" entries that a YAML file may also give as a mapping
MAPPING_FIELDS = ("source_weights",)
STAGE_CONFIGS: dict[str, type] = {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "ppo": PPOConfig,
                                  "rloo": RLOOConfig, "grpo": GRPOConfig, "best-of-n": BestOfNConfig,
                                  "sample-pairs": SamplePairsConfig, "judge": JudgeConfig, "serve": ServeConfig,
                                  "merge-lora": MergeLoraConfig}
REQUIRED = ("model", "data", "output_dir")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def load_yaml_file(path: str | Path, what: str = "config file"):
    """``yaml.safe_load`` of a file, with errors that name it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file; unknown fields are errors that name the file and suggest a spelling."""
    return check_mapping(load_yaml_file(path) or {}, cls, str(path))


def check_mapping(raw, cls: type, where: str) -> dict[str, Any]:
    """Field values for ``cls`` from a mapping, typed and checked; errors name ``where`` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of field: value, got {type(raw).__name__}")
    known = field_names(cls)
    stage = stage_of(cls)
    try:  # TRL / transformers TrainingArguments names -> rlhfkit fields (trl_names.TABLE)
        raw = translate_trl(raw, stage, set(known))
    except TrlNameError as e:
        raise ConfigError(f"{where}: {e} (see docs/trl.md)") from None
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: {unknown_key_message(str(key), stage, known)}")
    # argparse neither converts nor checks non-string defaults (nor checks `choices` on any
    # default), so YAML values are typed and checked here, where the file can be named.
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {key: _yaml_value(where, fields[key], hints.get(key), value) for key, value in raw.items()}


def stage_of(cls: type) -> str:
    """The stage name whose config class is ``cls`` ("" when none)."""
    return next((name for name, c in STAGE_CONFIGS.items() if c is cls), "")


def unknown_key_message(key: str, stage: str, known: list[str]) -> str:
    """An unknown field: a TRL option rlhfkit lacks is named as one; else the closest spelling,
    TRL names this stage maps first (``per_device_train_batch_sz`` -> per_device_train_batch_size)."""
    if is_trl_option(key):
        return (f"unsupported TRL option {key!r}: rlhfkit {stage or 'this stage'} has no equivalent; remove it "
                "(docs/trl.md lists every TRL name rlhfkit maps)")
    hint = trl_suggestions(key, stage, known)
    return f"unknown field {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def from_mapping(cls: type, raw: dict, where: str):
    """A validated config of ``cls`` from a mapping (a pipeline stage's fields, say)."""
    cfg = cls(**check_mapping(raw, cls, where))
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config:", f"{where}:", 1)) from None
    return cfg


def _yaml_value(path, f: dataclasses.Field, hint, value):
    """`value` as the field's type (int, float, str, bool, list[str]), or a ConfigError."""
    given = value

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{path}: field {f.name!r}: expected {expected}, got {given!r}")

    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and not isinstance(value, bool):
        raise bad("true or false")
    if hint is int:
        if not (is_number and (isinstance(value, int) or value.is_integer())):
            raise bad("an integer")
        value = int(value)
    if hint is float:
        if not (is_number or isinstance(value, str)):
            raise bad("a number")
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            value = float(value)
        except (ValueError, OverflowError):
            raise bad("a number") from None
    if hint is str and not isinstance(value, str):
        raise bad("a string")
    if hint == list[float]:
        value = [value] if isinstance(value, (int, float)) else value
        if not (isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad("a list of numbers")
        value = [float(v) for v in value]
    if hint == list[str]:
        if f.name in MAPPING_FIELDS and isinstance(value, dict):  # {source: weight} -> ["source=weight"]
            value = [f"{k}={v}" for k, v in value.items()]
        value = [value] if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad("a list of strings")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{path}: field {f.name!r}: {value!r} is not one of {', '.join(choices)}")
    return value


def parse_config(cls: type, argv: list[str] | None = None, prog: str | None = None):
    """YAML defaults from ``--config``, then command-line overrides; validated."""
    from transformers import HfArgumentParser

    # allow_abbrev=False: a misspelt prefix (--learning_rat) must not silently set a field.
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(cls, prog=prog, description=(cls.__doc__ or "").strip(), allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file of field: value (command-line flags override it).")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback on errors.")
    rest, trl_flags = split_trl_flags(rest, cls)
    raw = (load_yaml_file(known.config) or {}) if known.config else {}
    if trl_flags:  # TRL names on the command line override the file's, then translate together
        raw = {**raw, **trl_flags} if isinstance(raw, dict) else raw
    if raw or known.config:
        parser.set_defaults(**check_mapping(raw, cls, str(known.config or "command line")))
    # returns (config, namespace of --config/--debug, leftover strings)
    # look_for_args_file=False: otherwise a '<argv[0]>.args' file beside the program silently adds flags.
    parsed = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True,
                                                look_for_args_file=False)
    cfg, extra = parsed[0], parsed[-1]
    if extra:
        trl = [a[2:].split("=")[0] for a in extra if a.startswith("--") and is_trl_option(a[2:].split("=")[0])]
        if trl:
            raise ConfigError(f"command line: {unknown_key_message(trl[0], stage_of(cls), field_names(cls))}")
        raise ConfigError(f"unknown command-line arguments: {' '.join(extra)} (see --help)")
    validate(cfg)
    return cfg


def split_trl_flags(argv: list[str], cls: type) -> tuple[list[str], dict]:
    """(argv without TRL-named flags, {TRL name: YAML-typed value}) for the names ``cls``'s stage maps
    that are not rlhfkit fields (``--per_device_train_batch_size 4``; a bare ``--bf16`` is true)."""
    names = set(names_for(stage_of(cls))) - set(field_names(cls))
    rest, found, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in names:
            rest.append(arg)
            i += 1
            continue
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value, i = (argv[i + 1], i + 2) if has_value else ("true", i + 1)
        else:
            i += 1
        found[name] = yaml.safe_load(value) if value.strip() else value
    return rest, found


def validate(cfg) -> None:
    src = "config"
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ConfigError(f"{src}: field {f.name!r}: {getattr(cfg, f.name)!r} is not one of {', '.join(choices)}")
    if isinstance(cfg, SamplerRunConfig):
        for name in REQUIRED:
            if not getattr(cfg, name):
                raise ConfigError(f"{src}: field {name!r} is required (set it in the YAML file or with --{name})")
    if isinstance(cfg, SamplePairsConfig) and (cfg.k < 2 or cfg.k % 2):
        raise ConfigError(f"{src}: field 'k' must be an even number >= 2, got {cfg.k}")
    if isinstance(cfg, BestOfNConfig):
        if cfg.n < 1 or not (cfg.reward_model or cfg.reward_fn):
            raise ConfigError(f"{src}: best-of-n needs 'n' >= 1 and a reward source ('reward_model' or 'reward_fn')")
    if isinstance(cfg, JudgeConfig):
        if not cfg.output and cfg.output_dir:
            cfg.output = str(Path(cfg.output_dir) / "prefs.jsonl")
        for name in ("data", "judge", "output"):
            if not getattr(cfg, name):
                raise ConfigError(f"{src}: field {name!r} is required (set it in the YAML file or with --{name})")
        if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout <= 0 or cfg.batch_size < 1:
            raise ConfigError(f"{src}: need concurrency >= 1, max_retries >= 0, timeout > 0, batch_size >= 1")
    if isinstance(cfg, ServeConfig):
        if not cfg.model:
            raise ConfigError(f"{src}: field 'model' is required (set it in the YAML file or with --model)")
        if not 0 <= cfg.port <= 65535:
            raise ConfigError(f"{src}: field 'port' must be 0-65535, got {cfg.port}")
    if isinstance(cfg, MergeLoraConfig):
        for name in ("model", "output_dir"):
            if not getattr(cfg, name):
                raise ConfigError(f"{src}: field {name!r} is required (set it in the YAML file or with --{name})")
    if not isinstance(cfg, TrainConfig):
        return
    validate_lora(cfg)
    for name in REQUIRED:
        if not getattr(cfg, name):
            raise ConfigError(f"{src}: field {name!r} is required (set it in the YAML file or with --{name})")
    if cfg.batch_size < 1:
        raise ConfigError(f"{src}: field 'batch_size' must be >= 1, got {cfg.batch_size}")
    if cfg.micro_batch_size < 0:
        raise ConfigError(f"{src}: field 'micro_batch_size' must be >= 0, got {cfg.micro_batch_size}")
    if cfg.max_steps == 0 or (cfg.max_steps < 0 and cfg.epochs <= 0):
        raise ConfigError(f"{src}: nothing to train: set 'max_steps' > 0 or 'epochs' > 0")
    if not cfg.data_split:
        raise ConfigError(f"{src}: field 'data_split' must not be empty (default: train)")
    if cfg.max_length < 2:
        raise ConfigError(f"{src}: field 'max_length' must be >= 2, got {cfg.max_length}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"{src}: field 'warmup_steps' must be >= 0, got {cfg.warmup_steps}")
    validate_report_to(cfg)
    if isinstance(cfg, OnlineConfig):
        validate_online(cfg)
    if isinstance(cfg, (RMConfig, DPOConfig)) and cfg.source_weights:
        from .data.sources import parse_source_weights

        try:
            parse_source_weights(cfg.source_weights, f"{src}: field 'source_weights'")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if isinstance(cfg, DPOConfig) and cfg.beta <= 0:
        raise ConfigError(f"{src}: field 'beta' must be > 0, got {cfg.beta}")


def dump_config(cfg, path: str | Path) -> None:
    """The resolved config, loadable again with ``--config``."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), encoding="utf-8")


def validate_report_to(cfg: TrainConfig) -> None:
    """``none`` (TRL's and transformers' default) means no extra sinks. ``all`` (transformers: every
    integration that happens to be installed) is refused: a run would start logging to services
    nobody chose, so the sinks are named instead."""
    sinks = ("tensorboard", "wandb", "mlflow")
    if [s.lower() for s in cfg.report_to] == ["none"]:
        cfg.report_to = []
    for sink in cfg.report_to:
        if sink == "all":
            raise ConfigError(f"config: field 'report_to': 'all' is not supported: name the sinks you want "
                              f"({', '.join(sinks)}), or none")
        if sink not in sinks:
            raise ConfigError(f"config: field 'report_to': unknown sink {sink!r} ({', '.join(sinks)}, or none)")


def validate_online(cfg: OnlineConfig) -> None:
    src = "config"
    if not cfg.reward_model and not cfg.reward_fn:
        raise ConfigError(f"{src}: set 'reward_model' and/or 'reward_fn': online RL needs a reward source")
    n_sources = int(bool(cfg.reward_model)) + len(cfg.reward_fn)
    if cfg.reward_weights and len(cfg.reward_weights) != n_sources:
        raise ConfigError(f"{src}: field 'reward_weights' has {len(cfg.reward_weights)} values for {n_sources} reward sources")
    if cfg.num_generations < 1 or (not isinstance(cfg, PPOConfig) and cfg.num_generations < 2):
        raise ConfigError(f"{src}: field 'num_generations' must be >= 2 for RLOO/GRPO (>= 1 for PPO), got {cfg.num_generations}")
    if cfg.kl_target < 0 or cfg.kl_coef < 0:
        raise ConfigError(f"{src}: fields 'kl_coef' and 'kl_target' must be >= 0")
    if cfg.overopt_window < 2:
        raise ConfigError(f"{src}: field 'overopt_window' must be >= 2, got {cfg.overopt_window}")
    if cfg.max_new_tokens < 1 or cfg.ppo_epochs < 1:
        raise ConfigError(f"{src}: fields 'max_new_tokens' and 'ppo_epochs' must be >= 1")


def validate_lora(cfg: TrainConfig) -> None:
    src = "config"
    if cfg.lora_r < 0:
        raise ConfigError(f"{src}: field 'lora_r' must be >= 0 (0: no LoRA), got {cfg.lora_r}")
    if cfg.lora_r and cfg.lora_alpha <= 0:
        raise ConfigError(f"{src}: field 'lora_alpha' must be > 0, got {cfg.lora_alpha}")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"{src}: field 'lora_dropout' must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.lora_r and not cfg.lora_target_modules:
        raise ConfigError(f"{src}: field 'lora_target_modules' is empty: name the modules to adapt, or all-linear")
    if cfg.load_in_4bit:
        _check_4bit(cfg, src)


def _check_4bit(cfg: TrainConfig, src: str) -> None:
    """QLoRA needs an adapter to train, a CUDA device and bitsandbytes: refuse early, naming the field."""
    import importlib.util

    import torch

    if not cfg.lora_r:
        raise ConfigError(f"{src}: field 'load_in_4bit' needs 'lora_r' > 0 (a 4-bit base cannot be trained itself)")
    if not torch.cuda.is_available() or cfg.device == "cpu":
        raise ConfigError(f"{src}: field 'load_in_4bit' needs a CUDA GPU (device {cfg.device!r}, CUDA "
                          f"{'available' if torch.cuda.is_available() else 'not available'}); use lora_r alone on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{src}: field 'load_in_4bit' needs the bitsandbytes package (pip install bitsandbytes)")
