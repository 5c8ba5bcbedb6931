"""``rlhfkit merge-lora``: a LoRA run's adapter folder -> a full Hugging Face folder.

The merged weights are W + (lora_alpha / r) * B A for every adapted layer (Hu et al. 2021, eq. 3),
so the folder computes what base + adapter computed, with no ``peft`` needed to load it:
``AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification`` for a LoRA reward model or
critic, whose trained score head is written in place of the base's) reads it as any other model.
Chained adapters (a LoRA DPO run started from a LoRA SFT folder) merge in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .config import dump_config, option, require
from .models import (ADAPTER_CONFIG, DTYPES, is_adapter_dir, load_causal_lm, load_reward_model, load_tokenizer,
                     save_model)


@dataclass
class MergeLoraConfig:
    """Merge a LoRA adapter folder into its base model and write a full Hugging Face folder."""

    stage: ClassVar[str] = "merge-lora"

    model: str = option("", "Adapter folder a LoRA run wrote (adapter_config.json, adapter_model.safetensors) (required).")
    output_dir: str = option("", "Where the merged model folder (config.json, model.safetensors, tokenizer) goes (required).")
    dtype: str = option("float32", "Dtype of the merged weights.", choices=["float32", "bfloat16", "float16"])
    trust_remote_code: bool = option(False, "Allow model code from the base model's folder or hub repo to run.")
    allow_pickle: bool = option(False, "Allow pickle adapter/base weights; off because unpickling can run code.")

    def check(self) -> None:
        require(self, "model", "output_dir")


def run_merge_lora(cfg: MergeLoraConfig) -> dict:
    if not is_adapter_dir(cfg.model):
        raise ValueError(f"model {cfg.model}: not a LoRA adapter folder (no {ADAPTER_CONFIG}); "
                         "it is already a full model")
    adapter = json.loads((Path(cfg.model) / ADAPTER_CONFIG).read_text())
    reward = adapter.get("task_type") == "SEQ_CLS"
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    load = dict(dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    model = load_reward_model(cfg.model, tokenizer, **load) if reward else load_causal_lm(cfg.model, **load)
    out = Path(cfg.output_dir)
    save_model(model, tokenizer, out)
    summary = {"stage": "merge-lora", "adapter": str(cfg.model), "base": adapter.get("base_model_name_or_path"),
               "kind": "reward model" if reward else "causal LM", "lora_r": adapter.get("r"),
               "parameters": sum(p.numel() for p in model.parameters()), "dtype": cfg.dtype}
    dump_config(cfg, out / "config.yaml")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"rlhfkit merge-lora: {cfg.model} + base {summary['base']} -> {out} ({summary['parameters']:,} parameters)")
    return summary
