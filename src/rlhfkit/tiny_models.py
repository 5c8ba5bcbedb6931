"""Tiny tokenizers and models, built on the spot: for tests, benchmarks and the demo worlds.

A word-level tokenizer over a handful of texts (``build_word_tokenizer``), a byte-level BPE
tokenizer trained on the spot with a model family's special tokens (``build_bpe_tokenizer``), a
randomly initialised Llama-style model sized for CPU (``tiny_causal_lm``), and a model folder that
every stage loads with ``from_pretrained`` (``make_tiny_model_dir``). Real runs use a model's own
tokenizer and weights.
"""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from .models import save_model

WORD_SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def wrap_word_tokenizer(core, path: str | os.PathLike | None = None):
    """A `tokenizers` word-level core (specials first, in ``WORD_SPECIALS`` order) as a fast HF
    tokenizer: <bos> prepended, words joined by spaces, a simple chat template.

    The decoder keeps " ." as is (no cleanup): decoded samples must re-tokenize to the same ids,
    since reward models and DPO read sampled text back.
    """
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", core.token_to_id("<bos>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<bos>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": WORD_SPECIALS[4:]})
    tok.chat_template = WORD_CHAT_TEMPLATE
    if path is not None:
        tok.save_pretrained(path)
    return tok


def build_word_tokenizer(texts: list[str], path: str | os.PathLike | None = None):
    """A word-level fast tokenizer over the words of ``texts``, with pad/bos/eos/unk and a chat template.

    Small and deterministic, for tests and the built-in worlds; real runs use the model's own tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in texts for w in t.split()} - set(WORD_SPECIALS))
    vocab = {tok: i for i, tok in enumerate(WORD_SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap_word_tokenizer(core, path)


def tiny_causal_lm(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                   max_positions: int = 256, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised Llama-style model sized for CPU tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_tiny_model_dir(path: str | os.PathLike, texts: list[str], seed: int = 0, **sizes) -> str:
    """Write a tokenizer + tiny causal LM folder that every stage can load with ``from_pretrained``."""
    tok = build_word_tokenizer(texts)
    save_model(tiny_causal_lm(tok, seed=seed, **sizes), tok, path)
    return str(path)


def build_bpe_tokenizer(texts: list[str], bos: str | None = None, eos: str | None = None, pad: str | None = None,
                        unk: str | None = None, specials: list[str] = (), chat_template: str | None = None,
                        vocab_size: int = 512, path: str | os.PathLike | None = None):
    """A byte-level BPE fast tokenizer trained on ``texts`` on the spot, as GPT-2, Llama 3 and Qwen
    tokenise: words carry their leading space ("Ġword"), and any text encodes (no unknown bytes).

    ``bos`` (when given) is prepended by ``tokenizer(text)``, not by ``add_special_tokens=False``;
    ``specials`` are the chat-template markers (never split, never merged with text). For tests and
    benchmarks that need a model family's real template and special tokens on a tiny model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    named = [t for t in (bos, eos, pad, unk) if t is not None]
    reserved = list(dict.fromkeys(named + list(specials)))
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=reserved, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, core.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)
    extra = [t for t in specials if t not in named]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.chat_template = chat_template
    if path is not None:
        tok.save_pretrained(path)
    return tok
