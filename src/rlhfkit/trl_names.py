"""Hugging Face TRL / transformers ``TrainingArguments`` option names, translated to rlhfkit fields.

A TRL YAML (``trl sft|dpo|reward|grpo|rloo --config x.yaml``) runs as ``rlhfkit STAGE --config
x.yaml``: every TRL name in it is translated here, accepted as a no-op (listed values that do not
change results), or refused with one error that says what to do. Nothing is silently ignored.

``TABLE`` is the single source: :func:`translate` reads it and :func:`markdown_table` renders the
table in docs/trl.md (tests/unit/test_trl_names.py checks they agree). Imports nothing from rlhfkit;
``TrlNameError`` (a ValueError) becomes a ``ConfigError`` naming the file in config.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("rlhfkit")

TRAIN_STAGES = ALL = ("sft", "rm", "dpo", "ppo", "rloo", "grpo")
ONLINE = ("ppo", "rloo", "grpo")


class TrlNameError(ValueError):
    """A TRL option rlhfkit cannot honour; the message names it and says what to do."""


@dataclass(frozen=True)
class TrlName:
    """One TRL name: what it becomes in rlhfkit, on which stages, and why."""

    trl: str
    field: str  # rlhfkit field(s) it sets ("" when none)
    how: str  # same | renamed | converted | accepted (only at the ``ok`` values when given)
    note: str = ""
    stages: tuple[str, ...] = ALL
    ok: tuple = ()  # accepted (no-op) values; for "accepted" entries, () means any value
    convert: Callable[[Any, dict, str], dict] | None = None  # (value, whole mapping, stage) -> {field: value}


def _unsupported(name: str, value, why: str) -> TrlNameError:
    return TrlNameError(f"unsupported TRL option {name!r} (value {value!r}): {why}")


def _scheduler(v, raw, stage):
    names = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
    if v not in names:
        raise _unsupported("lr_scheduler_type", v, "rlhfkit has linear, cosine, constant and constant_with_warmup; "
                           "set one of them")
    return {"lr_scheduler": names[v]}


def _warmup_steps(v, raw, stage):
    if isinstance(v, float) and 0 < v < 1:  # transformers 5: a float in (0, 1) is a ratio of the steps
        return {"warmup_ratio": v}
    return {"warmup_steps": int(v)}


def _precision(v, raw, stage):
    bf16, fp16 = raw.get("bf16"), raw.get("fp16")
    if bf16 and fp16:
        raise TrlNameError("TRL options 'bf16' and 'fp16' are both true: keep one")
    return {} if bf16 is None and fp16 is None else {"dtype": "bfloat16" if bf16 else "float16" if fp16 else "float32"}


def _loss_type(v, raw, stage):
    v = v[0] if isinstance(v, list) and len(v) == 1 else v
    kinds = {"sft": ("nll",), "dpo": ("sigmoid", "ipo", "robust", "hinge"), "grpo": ("dapo",)}.get(stage, ())
    if v not in kinds:
        why = {"sft": "rlhfkit's SFT loss is the token-mean NLL ('nll'); remove it",
               "dpo": "rlhfkit has sigmoid, ipo, robust and hinge (one loss, no list of several); set one of them",
               "grpo": "rlhfkit's GRPO loss is the token mean over the whole step's tokens (TRL's 'dapo'); remove "
                       "it or set dapo"}.get(stage, "no loss_type on this stage; remove it")
        raise _unsupported("loss_type", v, why)
    return {"loss_type": v} if stage == "dpo" else {}


def _scale_rewards(v, raw, stage):
    if v in (True, "group", False, "none"):
        return {"scale_rewards": v in (True, "group")}
    raise _unsupported("scale_rewards", v, "rlhfkit scales by the group's std ('group', true) or not at all "
                       "('none', false)")


def _peft(v, raw, stage):
    """TRL's ModelConfig: lora_* take effect only with use_peft, with TRL's defaults r 16, alpha 32, dropout 0.05."""
    if not v:
        return {"lora_r": 0}
    out = {"lora_r": raw.get("lora_r", 16), "lora_alpha": raw.get("lora_alpha", 32),
           "lora_dropout": raw.get("lora_dropout", 0.05)}
    if raw.get("lora_target_modules") is not None:
        out["lora_target_modules"] = raw["lora_target_modules"]
    return out


def _eval(v, raw, stage):
    """eval_strategy + eval_steps + dataset_test_split: TRL evaluates only when eval_strategy is not 'no'."""
    strategy = raw.get("eval_strategy", "no")
    if strategy not in ("no", "steps"):
        raise _unsupported("eval_strategy", strategy, "rlhfkit evaluates every eval_steps steps and at the end; "
                           "use 'steps' with eval_steps")
    if strategy == "no":
        return {}
    out = {"eval_steps": raw.get("eval_steps") or raw.get("logging_steps", 10)}  # TRL's default: logging_steps
    if raw.get("dataset_name") and "eval_data" not in raw:  # TRL evaluates on a split of the same dataset
        out.update(eval_data=raw["dataset_name"], eval_split=raw.get("dataset_test_split", "test"))
    return out


def _save(v, raw, stage):
    strategy = raw.get("save_strategy", "steps")
    if strategy == "no":
        return {"save_steps": 0}
    if strategy != "steps":
        raise _unsupported("save_strategy", strategy, "rlhfkit checkpoints every save_steps steps; use 'steps'")
    return {"save_steps": raw["save_steps"]} if "save_steps" in raw else {}


def _resume(v, raw, stage):
    if v in (None, False, True):
        return {"resume": True} if v else {}
    raise _unsupported("resume_from_checkpoint", v, "rlhfkit resumes from the newest checkpoint in "
                       "output_dir/checkpoints/: set it to true (or use --resume)")


def _drop_none(field: str):
    return lambda v, raw, stage: {} if v is None else {field: v}


BATCH = ("per_device_train_batch_size", "gradient_accumulation_steps")
E, R, C, A = "same", "renamed", "converted", "accepted"
_NOOP_FALSE = (False, None, 0, "", [], "none")

TABLE: tuple[TrlName, ...] = (
    # ---- model and data (TRL's ModelConfig and ScriptArguments)
    TrlName("model_name_or_path", "model", R),
    TrlName("dataset_name", "data", R, "a local file, `datasets` folder or hub name"),
    TrlName("dataset_train_split", "data_split", C, "'train' is the default and needs nothing",
            convert=lambda v, raw, stage: {} if v == "train" else {"data_split": v}),
    TrlName("dataset_test_split", "eval_data, eval_split", C, "used when eval_strategy is 'steps' (as in TRL)",
            convert=lambda v, raw, stage: {}),
    TrlName("trust_remote_code", "trust_remote_code", E),
    TrlName("dtype", "dtype", E, "auto, float32, bfloat16, float16", ok=("auto", "float32", "bfloat16", "float16")),
    TrlName("use_peft", "lora_r, lora_alpha, lora_dropout, lora_target_modules", C,
            "true: LoRA with TRL's defaults r 16, alpha 32, dropout 0.05 unless lora_* are set; false: lora_* "
            "are ignored, as in TRL", convert=_peft),
    TrlName("load_in_4bit", "load_in_4bit", E),
    TrlName("bnb_4bit_quant_type", "", A, "rlhfkit's 4-bit base is NF4", ok=("nf4",)),
    TrlName("model_revision", "", A, "rlhfkit loads the default revision", ok=("main", None)),
    # ---- batch and schedule (transformers TrainingArguments)
    TrlName("per_device_train_batch_size", "batch_size, micro_batch_size", C,
            "batch_size = per_device x gradient_accumulation_steps x processes (/ num_generations on grpo/rloo: "
            "rlhfkit counts prompts); micro_batch_size = per_device", convert=lambda v, raw, stage: {}),
    TrlName("gradient_accumulation_steps", "batch_size", C, "see per_device_train_batch_size",
            convert=lambda v, raw, stage: {}),
    TrlName("per_device_eval_batch_size", "eval_batch_size", R),
    TrlName("num_train_epochs", "epochs", R),
    TrlName("max_steps", "max_steps", E),
    TrlName("learning_rate", "learning_rate", E),
    TrlName("lr_scheduler_type", "lr_scheduler", C, "linear, cosine, constant; constant_with_warmup is rlhfkit's "
            "constant (which warms up when warmup is set)", convert=_scheduler),
    TrlName("warmup_ratio", "warmup_ratio", E),
    TrlName("warmup_steps", "warmup_steps", C, "an integer: steps; a float in (0, 1): warmup_ratio",
            convert=_warmup_steps),
    TrlName("weight_decay", "weight_decay", E),
    TrlName("max_grad_norm", "max_grad_norm", E),
    TrlName("bf16", "dtype", C, "true: bfloat16; both false: float32", convert=_precision),
    TrlName("fp16", "dtype", C, "true: float16", convert=_precision),
    TrlName("gradient_checkpointing", "gradient_checkpointing", E, "memory only"),
    TrlName("optim", "", A, "rlhfkit uses torch AdamW", ok=("adamw_torch", "adamw_torch_fused", "adamw_hf")),
    TrlName("adam_beta1", "", A, "torch AdamW's 0.9", ok=(0.9,)),
    TrlName("adam_beta2", "", A, "torch AdamW's 0.999", ok=(0.999,)),
    TrlName("adam_epsilon", "", A, "torch AdamW's 1e-8", ok=(1e-8,)),
    TrlName("seed", "seed", E),
    TrlName("resume_from_checkpoint", "resume", C, "true: the newest checkpoint in output_dir", convert=_resume),
    # ---- logging, evaluation, saving
    TrlName("output_dir", "output_dir", E),
    TrlName("logging_steps", "logging_steps", E),
    TrlName("eval_strategy", "eval_steps", C, "'no' or 'steps'", convert=_eval),
    TrlName("eval_steps", "eval_steps", C, "with eval_strategy 'steps' (default: logging_steps, as in TRL)",
            convert=lambda v, raw, stage: {} if "eval_strategy" in raw else {"eval_steps": v}),
    TrlName("save_strategy", "save_steps", C, "'steps' or 'no'", convert=_save),
    TrlName("save_steps", "save_steps", C, "with save_strategy 'steps'",
            convert=lambda v, raw, stage: {} if "save_strategy" in raw else {"save_steps": v}),
    TrlName("save_total_limit", "save_total_limit", C, "null: rlhfkit's default",
            convert=_drop_none("save_total_limit")),
    TrlName("report_to", "report_to", E, "'none': no extra sinks; 'all' is refused: name the sinks"),
    # ---- lengths and losses
    TrlName("max_length", "max_length", C, "null: rlhfkit's default", stages=("sft", "rm", "dpo"),
            convert=_drop_none("max_length")),
    TrlName("max_seq_length", "max_length", R, "older TRL name", stages=("sft",)),
    TrlName("max_prompt_length", "max_prompt_length", C, "older TRL name; null: rlhfkit's default",
            convert=_drop_none("max_prompt_length")),
    TrlName("max_completion_length", "max_new_tokens", R, stages=ONLINE),
    TrlName("completion_only_loss", "completion_only_loss", C, "null (TRL: decide from the data): rlhfkit's true",
            stages=("sft",), convert=_drop_none("completion_only_loss")),
    TrlName("packing", "padding_free", C, "rlhfkit packs each batch's examples with no padding; a batch still "
            "counts examples (TRL packs into max_length rows)", stages=("sft",),
            convert=lambda v, raw, stage: {"padding_free": v}),
    TrlName("padding_free", "padding_free", E, stages=("sft", "rm", "dpo")),
    TrlName("dataset_text_field", "", A, "rlhfkit reads `text`", stages=("sft",), ok=("text",)),
    TrlName("beta", "beta", E, stages=("dpo",)),
    TrlName("beta", "kl_coef", R, "GRPO's / RLOO's KL coefficient", stages=ONLINE),
    TrlName("loss_type", "loss_type", C, "dpo: sigmoid, ipo, robust, hinge; sft: nll; grpo: dapo",
            stages=("sft", "dpo", "grpo"), convert=_loss_type),
    TrlName("label_smoothing", "label_smoothing", E, "with sigmoid rlhfkit applies conservative DPO, TRL 1.16 "
            "ignores it (a warning says so)", stages=("dpo",)),
    TrlName("precompute_ref_log_probs", "precompute_ref", R, stages=("dpo",)),
    TrlName("precompute_ref_batch_size", "", A, "rlhfkit uses eval_batch_size", stages=("dpo",)),
    TrlName("center_rewards_coefficient", "center_rewards_coef", C, "null: 0", stages=("rm",),
            convert=lambda v, raw, stage: {"center_rewards_coef": v or 0.0}),
    # ---- sampling and online RL
    TrlName("num_generations", "num_generations", E, stages=ONLINE),
    TrlName("temperature", "temperature", E, stages=ONLINE),
    TrlName("top_p", "top_p", E, stages=ONLINE),
    TrlName("top_k", "top_k", C, "null: 0", stages=ONLINE, convert=lambda v, raw, stage: {"top_k": v or 0}),
    TrlName("num_iterations", "ppo_epochs", R, stages=ONLINE),
    TrlName("epsilon", "cliprange", R, stages=ONLINE),
    TrlName("reward_weights", "reward_weights", C, "null: all 1", stages=ONLINE, convert=_drop_none("reward_weights")),
    TrlName("scale_rewards", "scale_rewards", C, "'group'/true or 'none'/false", stages=("grpo",),
            convert=_scale_rewards),
    # ---- no effect on results: accepted with a log note
    *(TrlName(n, "", A, "no effect on results") for n in (
        "logging_dir", "logging_first_step", "logging_strategy", "run_name", "project", "do_train", "do_eval",
        "overwrite_output_dir", "disable_tqdm", "log_level", "log_level_replica", "log_on_each_node",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "remove_unused_columns", "dataset_num_proc", "save_only_model",
        "gradient_checkpointing_kwargs", "ddp_timeout", "ddp_find_unused_parameters", "ddp_backend",
        "skip_memory_metrics", "include_num_input_tokens_seen", "torch_empty_cache_steps", "use_cache",
        "log_completions", "num_completions_to_print", "eval_packing", "hub_model_id", "hub_strategy",
        "hub_private_repo", "shuffle_dataset", "local_rank")),
    TrlName("attn_implementation", "", A, "rlhfkit uses transformers' default attention (sdpa): speed, not results"),
    # ---- accepted only at values that change nothing (TRL's defaults)
    *(TrlName(n, "", A, "rlhfkit has no equivalent: accepted only when off (false or null)", ok=_NOOP_FALSE)
      for n in (
        "push_to_hub", "do_predict", "dataset_streaming", "dataloader_drop_last", "use_liger_kernel",
        "torch_compile", "auto_find_batch_size", "label_smoothing_factor", "neftune_noise_alpha", "fsdp",
        "deepspeed", "load_best_model_at_end", "eval_on_start", "use_vllm", "use_rslora", "use_dora",
        "load_in_8bit", "use_bnb_nested_quant", "sync_ref_model", "use_weighting", "assistant_only_loss",
        "mask_truncated_completions", "model_init_kwargs", "dataset_config", "chat_template_path",
        "lora_modules_to_save", "lora_target_parameters", "tf32", "ld_alpha", "loss_weights", "epsilon_high",
        "min_p", "activation_offloading", "dataset_kwargs", "eos_token", "pad_token",
        "generation_kwargs", "data_seed")),
    TrlName("disable_dropout", "", A, "rlhfkit keeps the model's dropout; today's LMs (Llama, Qwen, Mistral) have "
            "none, so this changes nothing for them"),
    TrlName("truncation_mode", "", A, "rlhfkit keeps the start of long sequences (prompts keep their end)",
            stages=("sft", "dpo"), ok=("keep_start",)),
    TrlName("f_divergence_type", "", A, "rlhfkit's DPO is reverse KL", stages=("dpo",), ok=("reverse_kl",)),
    TrlName("repetition_penalty", "", A, "rlhfkit samples without one", stages=ONLINE, ok=(1.0, None)),
)

_BY_STAGE: dict[str, dict[str, TrlName]] = {s: {} for s in TRAIN_STAGES}
for _e in TABLE:
    for _s in _e.stages:
        _BY_STAGE[_s].setdefault(_e.trl, _e)


def names_for(stage: str) -> dict[str, TrlName]:
    """TRL name -> entry, for a training stage ({} for other stages)."""
    return _BY_STAGE.get(stage, {})


def is_trl_option(name: str) -> bool:
    """Whether ``name`` is a transformers TrainingArguments or TRL config/model/script option at all
    (TRL is no dependency of rlhfkit; where it is installed its own classes are the reference)."""
    import dataclasses
    import importlib.util

    import transformers

    classes = [transformers.TrainingArguments]
    if importlib.util.find_spec("trl") is not None:
        import trl

        classes += [getattr(trl, n) for n in ("SFTConfig", "DPOConfig", "RewardConfig", "GRPOConfig", "RLOOConfig",
                                              "ModelConfig", "ScriptArguments") if hasattr(trl, n)]
    return any(name in {f.name for f in dataclasses.fields(c)} for c in classes)


def _batch(raw: dict, stage: str, native: dict) -> dict:
    per_device = raw.get("per_device_train_batch_size", 8)  # TrainingArguments' default
    accumulation = raw.get("gradient_accumulation_steps", 1)
    for name, v in (("per_device_train_batch_size", per_device), ("gradient_accumulation_steps", accumulation)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise TrlNameError(f"TRL option {name!r}: expected an integer >= 1, got {v!r}")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    total = per_device * accumulation * processes
    if stage in ("rloo", "grpo"):  # TRL counts completions per step, rlhfkit counts prompts
        gens = native.get("num_generations", {"rloo": 4, "grpo": 4}[stage])
        if total % gens:
            raise TrlNameError(f"TRL options per_device_train_batch_size x gradient_accumulation_steps x processes = "
                               f"{total} completions is not a multiple of num_generations {gens}")
        return {"batch_size": total // gens, "micro_batch_size": per_device}
    return {"batch_size": total, "micro_batch_size": per_device}


def translate(raw: dict, stage: str, known: set[str]) -> dict:
    """``raw`` (a YAML mapping, maybe with TRL names) as rlhfkit fields of ``stage``.

    ``known`` is the stage's rlhfkit field names. Native names pass through; TRL names are translated
    (one log line lists them), accepted as no-ops (one log line), or refused (TrlNameError). A TRL name
    and the rlhfkit field it sets both given is an error. Names that are neither pass through for
    the caller's unknown-field error.
    """
    table = names_for(stage)
    trl_keys = [k for k in raw if k in table and not _native(table[k], raw, stage, known)]
    if not trl_keys:
        return dict(raw)
    peft = "use_peft" in raw
    native = {k: v for k, v in raw.items() if k not in trl_keys
              and not (peft and k.startswith("lora_"))}  # with use_peft, lora_* are TRL's (read by _peft)
    out: dict = {}
    src: dict[str, list[str]] = {}  # field -> the TRL names that set it
    mapped, accepted = [], []
    for key in trl_keys:
        e, value = table[key], raw[key]
        if e.how == A:
            if e.ok and value not in e.ok:
                raise _unsupported(key, value, f"{e.note}; remove it or set {_ok_text(e)}")
            accepted.append(key)
            continue
        if e.ok and value not in e.ok:
            raise _unsupported(key, value, f"set {_ok_text(e)}")
        got = e.convert(value, raw, stage) if e.convert else {e.field: value}
        _merge(out, src, got, [key])
        mapped.append(key)
    if any(k in raw for k in BATCH):
        _merge(out, src, _batch(raw, stage, {**native, **out}), [k for k in BATCH if k in raw])
    for name in out:
        if name in native:
            raise TrlNameError(f"both {name!r} and the TRL option(s) {', '.join(map(repr, src[name]))} are set: "
                               "keep one")
    for name in list(out):
        if name not in known:  # a field this build does not have (another option's default value is fine)
            raise TrlNameError(f"unsupported TRL option(s) {', '.join(map(repr, src[name]))}: this rlhfkit has "
                               f"no field {name!r}; remove it")
    if mapped:
        log.info("TRL names mapped: " + ", ".join(f"{k} -> {table[k].field or '-'}" for k in mapped)
                 + (" (per_device x accumulation x processes -> batch_size "
                    f"{out['batch_size']}, micro_batch_size {out['micro_batch_size']})" if "batch_size" in out else ""))
    if accepted:
        log.info("TRL options accepted with no effect on results: " + ", ".join(accepted))
    loss_type = out.get("loss_type", native.get("loss_type", "sigmoid"))
    if stage == "dpo" and raw.get("label_smoothing") and loss_type == "sigmoid":
        log.warning(f"label_smoothing {raw['label_smoothing']} with loss_type sigmoid: rlhfkit applies conservative "
                    "DPO (cDPO); TRL 1.16 ignores label_smoothing for sigmoid, so results differ (docs/trl.md)")
    return {**native, **out}


def _native(e: TrlName, raw: dict, stage: str, known: set[str]) -> bool:
    """A name that is also an rlhfkit field is read as rlhfkit's unless its TRL meaning differs here:
    lora_* under use_peft, or a value only TRL has (a list of one loss_type, 'group', null)."""
    if e.trl not in known:
        return False
    if e.trl.startswith("lora_"):
        return "use_peft" not in raw
    if e.how == E or e.convert is None:
        return True
    try:
        return e.convert(raw[e.trl], raw, stage) == {e.trl: raw[e.trl]}
    except TrlNameError:  # a value neither reads: TRL's message for TRL-only shapes, else the field's own check
        return not isinstance(raw[e.trl], (list, type(None)))


def _merge(out: dict, src: dict, got: dict, keys: list[str]) -> None:
    """Add ``got`` (fields set by TRL names ``keys``) to ``out``, remembering which names set each."""
    for name, value in got.items():
        if name in out and out[name] != value:
            raise TrlNameError(f"TRL options {', '.join(map(repr, src[name] + keys))} set {name!r} differently")
        out[name] = value
        src.setdefault(name, []).extend(k for k in keys if k not in src.get(name, []))


def _ok_text(e: TrlName) -> str:
    return "false or null" if e.ok is _NOOP_FALSE else " or ".join(map(repr, e.ok))


def markdown_table() -> str:
    """The table in docs/trl.md: one row per TRL name and stage group."""
    rows = ["| TRL name | rlhfkit | how | stages | note |", "|---|---|---|---|---|"]
    for e in sorted(TABLE, key=lambda e: (e.how == A, e.trl)):
        stages = "all" if e.stages == ALL else ", ".join(e.stages)
        ok = f" (accepted: {_ok_text(e)})" if e.ok and e.how == A and e.ok is not _NOOP_FALSE else ""
        rows.append(f"| `{e.trl}` | {'`' + e.field + '`' if e.field else '-'} | {e.how} | {stages} | {e.note}{ok} |")
    return "\n".join(rows)


def suggestions(key: str, stage: str, known: list[str]) -> list[str]:
    """Close spellings for an unknown key: TRL names this stage maps first, then rlhfkit fields."""
    import difflib

    trl = [n for n, e in names_for(stage).items() if e.how != A]
    return (difflib.get_close_matches(key, trl, n=1, cutoff=0.75)
            or difflib.get_close_matches(key, known, n=1) or difflib.get_close_matches(key, trl, n=1))
