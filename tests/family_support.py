"""Tiny random-initialised models of real model families, for the family tests.

Each family gets its real configuration class (sizes shrunk), its published chat template
(written out here from the model's ``tokenizer_config.json``: Meta-Llama-3-8B-Instruct,
Qwen2.5-0.5B-Instruct, Mistral-7B-Instruct-v0.1, gemma-2-2b-it, gemma-3-1b-it,
Phi-3-mini-4k-instruct; GPT-2 has none) and a byte-level BPE tokenizer trained on the spot with
that family's special tokens (``tiny_models.build_bpe_tokenizer``). The published special-token choices
are kept, including the absence of a pad token (Llama 3, Mistral, GPT-2: rlhfkit pads with EOS).
Left out of the templates: Qwen2.5's tool-calling branches and Gemma 3's list-of-parts content
(images); the string-content paths are as published.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

QWEN2 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}")

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

# The words the tokenizers are trained on and the data are drawn from.
WORDS = ("the soup is hot cold good bad warm fine very nice thanks how what why tell me about a story of "
         "cats dogs rain sun today please yes no maybe it was I think you can help with this that").split()


@dataclass
class Family:
    """One model family: its config class, template, special tokens, and what a turn ends with."""

    name: str
    config_cls: str  # a transformers config class name
    model_cls: str  # its causal-LM class
    template: str | None
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None = None
    specials: list[str] = field(default_factory=list)
    # What the template writes after an assistant message's content: trained with it (see the test).
    turn_end: str = ""
    config: dict = field(default_factory=dict)
    packs: bool = True  # packing_works' expected verdict for the causal LM (checked by the tests)


FAMILIES = {f.name: f for f in [
    Family("llama3", "LlamaConfig", "LlamaForCausalLM", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", None,
           specials=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"], turn_end="<|eot_id|>",
           config=dict(num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False)),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", QWEN2, None, "<|im_end|>", "<|endoftext|>",
           specials=["<|im_start|>"], turn_end="<|im_end|>\n",
           config=dict(num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False)),
    Family("mistral", "MistralConfig", "MistralForCausalLM", MISTRAL, "<s>", "</s>", None, unk="<unk>",
           specials=["[INST]", "[/INST]"], turn_end="</s>", config=dict(num_key_value_heads=2, sliding_window=8)),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", GEMMA2, "<bos>", "<eos>", "<pad>", unk="<unk>",
           specials=["<start_of_turn>", "<end_of_turn>"], turn_end="<end_of_turn>\n",
           config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                       final_logit_softcapping=30.0, attn_logit_softcapping=50.0)),
    Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA3, "<bos>", "<eos>", "<pad>", unk="<unk>",
           specials=["<start_of_turn>", "<end_of_turn>"], turn_end="<end_of_turn>\n",
           config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8)),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", PHI3, "<s>", "<|endoftext|>", "<|endoftext|>", unk="<unk>",
           specials=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], turn_end="<|end|>\n",
           config=dict(num_key_value_heads=4)),
    Family("gpt2", "GPT2Config", "GPT2LMHeadModel", None, None, "<|endoftext|>", None),
]}
CHAT_FAMILIES = [n for n, f in FAMILIES.items() if f.template is not None]


def make_tokenizer(fam: Family):
    from rlhfkit.tiny_models import build_bpe_tokenizer

    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    return build_bpe_tokenizer(texts, bos=fam.bos, eos=fam.eos, pad=fam.pad, unk=fam.unk, specials=fam.specials,
                               chat_template=fam.template, vocab_size=320)


def make_model(fam: Family, tok, seed: int = 0):
    """The family's causal LM, randomly initialised at 2 layers x 32 wide, its special ids as published."""
    import transformers

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if fam.name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    else:
        cfg = getattr(transformers, fam.config_cls)(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, **ids, **fam.config)
    torch.manual_seed(seed)
    return getattr(transformers, fam.model_cls)(cfg)


def make_family_dir(name: str, path) -> str:
    """Write the family's tokenizer + tiny causal LM folder; returns its path."""
    from rlhfkit.models import save_model

    fam = FAMILIES[name]
    tok = make_tokenizer(fam)
    save_model(make_model(fam, tok), tok, path)
    return str(path)


def length_reward(prompts, completions, **_):
    """A GRPO reward both sides of any family can compute: prefers completions of about 8 characters."""
    return [-abs(len(str(c)) - 8) / 8.0 for c in completions]
