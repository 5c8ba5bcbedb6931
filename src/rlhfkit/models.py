"""Loading, saving and running policy, reference and reward models.

Everything goes through the `transformers` Auto classes so that any Hugging Face folder or hub id
works, and every stage writes a folder that ``from_pretrained`` loads back. Weights load from
safetensors only unless the caller opts in to pickle; ``trust_remote_code`` is off unless set.

LoRA (``peft``): a trainer with ``lora_r > 0`` wraps its model with :func:`add_lora` and writes an
adapter folder (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer files). The
loaders here recognise such a folder and return its base with the adapter merged in, so every
stage that reads a model (eval, serve, the next trainer) takes an adapter folder as it takes a full
one. The frozen reference of a LoRA run is the policy itself with its adapter switched off
(:func:`adapter_disabled`): no second copy of the weights.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase)

from .config import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~100x slower on common CPUs), bf16 on GPUs that have it."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------- loading


def looks_local(path: str | os.PathLike) -> bool:
    """Whether a model name can only be a local folder: ./x, ../x, /x, ~/x, a/b/c, x/ or a path
    whose first folder exists here (``models/nope`` beside a ``models/`` folder). A bare ``name`` or
    ``org/name`` may be a hub id."""
    path = str(path)
    first = path.split("/")[0]
    return (path.startswith((".", "/", "~")) or "\\" in path or path.count("/") > 1 or path.endswith("/")
            or ("/" in path and Path(first).is_dir()) or Path(path).exists())


def check_model_path(path: str | os.PathLike, field: str = "") -> None:
    """Refuse a local model path that is not a folder in one line naming the field and the path,
    before ``from_pretrained`` turns it into a failed Hugging Face Hub request."""
    path = str(path)
    if looks_local(path) and not Path(path).expanduser().is_dir():
        what = "a file, not a model folder" if Path(path).expanduser().exists() else f"no folder {path!r}"
        if what.startswith("a file"):
            what = f"{path!r} is {what}"
        where = "" if Path(path).expanduser().is_absolute() else f" (relative to {os.getcwd()})"
        raise ConfigError(f"{_field(field)}{what}{where}: check the path")


def _field(field: str) -> str:
    return f"field {field!r}: " if field else ""


def _not_found(path: str, field: str, error: OSError) -> ConfigError:
    """A name that is neither a local folder nor loadable from the hub (or its cache when offline)."""
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "") not in ("", "0")]
    why = (f"and the Hugging Face Hub is offline ({offline[0]}=1) with no cached copy" if offline
           else f"and the Hugging Face Hub did not give it either: {str(error).splitlines()[0]}")
    return ConfigError(f"{_field(field)}no folder {str(path)!r} here, {why}")


def load_tokenizer(path: str, trust_remote_code: bool = False,
                   padding_side: str = "right", field: str = "") -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token. Where the model has none, EOS doubles as pad: that is safe here
    because every reward read and loss uses the attention mask, never ``input_ids == pad``.
    ``field`` (the config field the path came from) is named in the error for a missing model."""
    check_model_path(path, field)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        if Path(path).is_dir():
            raise
        raise _not_found(path, field, e) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
        log.info("%s: no pad token; using EOS (%r) as pad, disambiguated by the attention mask", path, tok.eos_token)
    tok.padding_side = padding_side
    return tok


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def weights_kwargs(path: str, allow_pickle: bool, trust_remote_code: bool) -> dict:
    """from_pretrained keywords of the loading rule: safetensors only unless ``allow_pickle``; a folder
    with only pickle weights is refused with one line (an OSError) naming it and the opt-in."""
    # safetensors only by default: a pickle checkpoint can run arbitrary code when loaded.
    folder = Path(path)
    if not allow_pickle and folder.is_dir() and not list(folder.glob("*.safetensors*")):
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_WEIGHTS))
        if pickles:
            raise OSError(f"{path}: has only pickle weights ({', '.join(pickles[:3])}), which can run code when "
                          "loaded; rlhfkit loads safetensors unless told otherwise. Convert them "
                          "(save_pretrained writes safetensors) or set allow_pickle: true if you trust this folder")
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": trust_remote_code}


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                   allow_pickle: bool = False, load_in_4bit: bool = False, field: str = "", **extra) -> PreTrainedModel:
    """A causal LM from a model folder or hub id; an adapter folder loads as base + adapter, merged.
    ``extra`` goes to ``from_pretrained`` (e.g. ``attn_implementation``)."""
    check_model_path(path, field)
    if is_adapter_dir(path):
        return _merged_adapter(path, allow_pickle, lambda base: load_causal_lm(
            base, dtype, trust_remote_code, allow_pickle, load_in_4bit, **extra))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, **_quantization_kwargs(load_in_4bit, dtype), **extra,
        **weights_kwargs(path, allow_pickle, trust_remote_code))
    return model


def load_reward_model(path: str, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32,
                      trust_remote_code: bool = False, allow_pickle: bool = False,
                      load_in_4bit: bool = False) -> PreTrainedModel:
    """A scalar-output sequence classifier from any checkpoint.

    A causal-LM or bare encoder checkpoint (e.g. the MiniLM ``BertModel``) gets a new, randomly
    initialised 1-output head; a sequence-classification checkpoint with one label loads as is.
    An adapter folder (a LoRA reward model or critic) loads as its base with the adapter and the
    trained head it carries merged in.
    """
    if is_adapter_dir(path) and _adapter_task(path) != "SEQ_CLS":  # e.g. a LoRA SFT run as the starting point
        if load_in_4bit:
            raise OSError(f"{path}: a LoRA causal-LM folder cannot start a 4-bit reward model; "
                          "run `rlhfkit merge-lora` on it first")
        lm = load_causal_lm(path, dtype, trust_remote_code, allow_pickle)
        return _reward_from_causal_lm(lm, tokenizer, trust_remote_code)
    if is_adapter_dir(path):
        return _merged_adapter(path, allow_pickle, lambda base: load_reward_model(
            base, tokenizer, dtype, trust_remote_code, allow_pickle, load_in_4bit))
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    extra = {}
    if getattr(config, "num_labels", 2) != 1:
        extra = {"num_labels": 1, "ignore_mismatched_sizes": True}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=dtype, **extra, **_quantization_kwargs(load_in_4bit, dtype),
        **weights_kwargs(path, allow_pickle, trust_remote_code))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, path: str | os.PathLike) -> None:
    """A Hugging Face folder: config.json, model.safetensors, tokenizer files; for a LoRA model
    (a ``peft`` wrapper) the adapter only: adapter_config.json, adapter_model.safetensors."""
    Path(path).mkdir(parents=True, exist_ok=True)
    if is_peft(model):  # the adapter only; embeddings are never resized here, so none are saved with it
        model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
    else:
        with _pad_hidden_if_eos(model, tokenizer):
            model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


@contextmanager
def _pad_hidden_if_eos(model, tokenizer):
    """While saving a decoder reward model whose pad id is EOS: config.json gets ``pad_token_id: null``.

    ``transformers``' sequence classifiers read the last token that is not ``pad_token_id``; with
    pad == EOS that is the token *before* a closing EOS, not the EOS that rlhfkit trained the score
    on (``reward_forward`` reads by attention mask). Without a pad id they read the last token, so
    ``AutoModelForSequenceClassification`` gives rlhfkit's rewards on unpadded input, and refuses
    padded batches ("Cannot handle batch sizes > 1 if no padding token is defined") rather than
    scoring the wrong token. rlhfkit's loaders set the pad id back from the tokenizer.
    """
    config = getattr(model, "config", None)
    eos = tokenizer.eos_token_id if tokenizer is not None else getattr(config, "eos_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    hide = hasattr(model, "score") and pad is not None and (pad == eos or (isinstance(eos, list) and pad in eos))
    if hide:
        config.pad_token_id = None
    try:
        yield
    finally:
        if hide:
            config.pad_token_id = pad


# --------------------------------------------------------------------------- LoRA (peft)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A local folder holding a ``peft`` adapter (hub adapters are not looked up: no network calls)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_peft(model) -> bool:
    # peft is imported only by code that made or loaded an adapter: if it is not imported yet,
    # no model can be a PeftModel, and plain runs never pay for the import.
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap_peft(model):
    """The ``transformers`` model inside a ``peft`` wrapper, else ``model``. peft injects the LoRA
    layers into that model in place, so calling it runs the adapter (unless switched off)."""
    return model.get_base_model() if is_peft(model) else model


def _quantization_kwargs(load_in_4bit: bool, dtype: torch.dtype) -> dict:
    """QLoRA (Dettmers et al. 2023): the frozen base in 4-bit NF4 with double quantisation, computing in
    ``dtype``. Needs CUDA and bitsandbytes (config validation refuses it otherwise)."""
    if not load_in_4bit:
        return {}
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype)
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def _adapter_task(path: str | os.PathLike) -> str | None:
    import json

    return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("task_type")


def _reward_from_causal_lm(lm: PreTrainedModel, tokenizer, trust_remote_code: bool) -> PreTrainedModel:
    """A 1-output sequence classifier with ``lm``'s backbone weights and a new head: what
    ``load_reward_model`` makes of a causal-LM folder, for a causal LM that exists only in memory
    (a merged LoRA adapter)."""
    import copy

    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config, dtype=lm.dtype, trust_remote_code=trust_remote_code)
    model.base_model.load_state_dict(lm.base_model.state_dict())
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _merged_adapter(path: str, allow_pickle: bool, load_base) -> PreTrainedModel:
    """Base (``load_base(base_model_name_or_path)``, itself possibly an adapter folder: chained LoRA
    stages) + the adapter of ``path``, merged into plain weights (``merge_and_unload``)."""
    from peft import PeftConfig, PeftModel

    if not allow_pickle and not (Path(path) / ADAPTER_WEIGHTS).is_file():
        raise OSError(f"{path}: adapter folder without {ADAPTER_WEIGHTS} (pickle adapter weights can run code "
                      "when loaded); set allow_pickle: true if you trust this folder")
    base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base_path:
        raise OSError(f"{path}/{ADAPTER_CONFIG}: no base_model_name_or_path; cannot tell which model it adapts")
    model = PeftModel.from_pretrained(load_base(base_path), path, is_trainable=False)
    return model.merge_and_unload()


def add_lora(model: PreTrainedModel, base: str, r: int, alpha: int, dropout: float, target_modules: list[str],
             reward: bool = False, quantized: bool = False):
    """Wrap ``model`` with a fresh LoRA adapter (Hu et al. 2021): only the adapter (and, for a reward
    model or critic, the score head) trains; the base weights are frozen.

    ``base`` is written to the adapter's config as the model it adapts (an absolute path for a local
    folder, so the adapter loads from any working directory). ``target_modules`` ["all-linear"] is
    peft's every-linear-layer shorthand (the LM head excluded). Trainable tensors are held in fp32
    whatever the base's dtype: they are the optimiser's master weights.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type=TaskType.SEQ_CLS if reward else TaskType.CAUSAL_LM)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    wrapped = get_peft_model(model, config)
    local = Path(base).is_dir()
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(base).resolve()) if local else base
    for p in wrapped.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return wrapped


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing on every layer of ``model`` (a LoRA wrapper's base included), non-reentrant.

    ``use_reentrant=False`` needs no input that requires grad, so a LoRA model's frozen embeddings
    work as they are (transformers also turns their output's requires-grad on, which is harmless).
    transformers checkpoints only in a training forward with grad enabled; the sampler runs in eval
    mode under ``no_grad``, so generation keeps its KV cache. A training forward drops a layer's
    cache, so shared-prompt scoring (which carries one through a trained forward) must not share.
    """
    base = unwrap_peft(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"config: field 'gradient_checkpointing': {type(base).__name__} does not support "
                         "gradient checkpointing; set gradient_checkpointing: false")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; gradient_* is its deprecated alias
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextmanager
def adapter_disabled(model):
    """Run ``model`` as its base weights: a LoRA model with its adapter switched off (peft's
    ``disable_adapter``: every LoRA layer returns its base layer's output, the same computation as
    the model before the adapter was added), in eval mode. Any other model runs as it is.

    This is the reference model of a LoRA run: frozen, and no second copy of the weights."""
    if not is_peft(model):
        yield model
        return
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- forward passes


def position_ids_from_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... counted over real tokens only, so left padding does not shift positions."""
    return (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)


def to_right_padding(input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor,
                     pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the left edge (stable), whatever the padding side was."""
    order_BT = torch.argsort(1 - attention_mask_BT.long(), dim=1, stable=True)
    mask = attention_mask_BT.gather(1, order_BT)
    ids = input_ids_BT.gather(1, order_BT).masked_fill(mask == 0, pad_id)
    return ids, mask


def last_token_index(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row, from the mask (never from pad ids)."""
    return attention_mask_BT.long().sum(-1) - 1


def reward_forward(model: PreTrainedModel, input_ids_BT: torch.Tensor,
                   attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, read at the last real token by attention mask. Returns (B,).

    The batch is first normalised to right padding, so left- and right-padded batches give the
    same rewards. Decoder classifiers (a ``score`` head over every position) are read at the last
    real token here rather than by ``transformers``' "last non-pad id" rule, which breaks when
    pad == EOS. Encoder classifiers (BERT-style, pooled from the first token) run as they are.
    """
    model = unwrap_peft(model)  # a LoRA reward model: its backbone and score head, adapter applied
    ids, mask = to_right_padding(input_ids_BT, attention_mask_BT, pad_id=model.config.pad_token_id or 0)
    if hasattr(model, "score"):
        backbone = getattr(model, model.base_model_prefix)
        hidden_BTH = backbone(input_ids=ids, attention_mask=mask,
                              position_ids=position_ids_from_mask(mask), use_cache=False).last_hidden_state
        last_BH = hidden_BTH[torch.arange(ids.shape[0], device=ids.device), last_token_index(mask)]
        return model.score(last_BH).squeeze(-1).float()
    return model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()


def packed_rewards(model: PreTrainedModel, input_ids_BT: torch.Tensor, position_ids_BT: torch.Tensor,
                   last_index: torch.Tensor, tree_mask_B1TT: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar reward of each packed sequence (decoder classifiers with a ``score`` head), read at its
    last token by flat index (``layout``'s ``last_index``); ``tree_mask``: ``data.pair_tree``'s. Returns (S,)."""
    model = unwrap_peft(model)
    hidden_BTH = getattr(model, model.base_model_prefix)(input_ids=input_ids_BT, position_ids=position_ids_BT,
                                                         attention_mask=tree_mask_B1TT, use_cache=False).last_hidden_state
    return model.score(hidden_BTH.flatten(0, 1)[last_index]).squeeze(-1).float()
