"""Rows laid out like public RLHF datasets, and tokenizers like real ones, built on the spot.

Each layout follows its dataset's published schema (column names, nesting, where the prompt
lives); the text is written here, a handful of rows each, with the awkward whitespace real data
has (double spaces, trailing newlines, non-ASCII). Nothing is downloaded.

``write_layouts(folder)`` writes each layout as ``<name>.jsonl``. ``byte_level_bpe(style)`` trains
a small byte-level BPE tokenizer (space-prefixed tokens, as GPT-2/Llama-3/Qwen vocabularies have)
with a ChatML (``"chatml"``) or Llama-3 header (``"llama3"``) chat template and pre-tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _hh(*turns: str) -> str:
    """An Anthropic hh-rlhf transcript: turns alternate Human / Assistant, each after a blank line."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# Anthropic/hh-rlhf (raw): only `chosen` and `rejected`, each the whole transcript; they share
# everything up to the final Assistant reply.
HH_RLHF = [
    {"chosen": _hh("What is a good way to keep basil fresh?",
                   "Put the stems in a glass of water on the counter, like cut flowers."),
     "rejected": _hh("What is a good way to keep basil fresh?", "Basil is a herb.")},
    {"chosen": _hh("Can you help me  write a haiku?", "Sure.", "About autumn, please.",
                   "Crisp leaves on the path\nthe old dog sniffs every one\nsmoke from a chimney"),
     "rejected": _hh("Can you help me  write a haiku?", "Sure.", "About autumn, please.",
                     "Autumn is a season.\n")},
    {"chosen": _hh("¿Cómo se dice «thank you» en japonés?", "Se dice «arigatō» (ありがとう)."),
     "rejected": _hh("¿Cómo se dice «thank you» en japonés?", "No lo sé. 🤷")},
    {"chosen": _hh("Tell me a fact about octopuses.", "  They have three hearts and blue blood."),
     "rejected": _hh("Tell me a fact about octopuses.", "They are fish.\n\n")},
    {"chosen": _hh("What's 2+2?", "4"), "rejected": _hh("What's 2+2?", "22")},
]

_UF_PROMPTS = ["Write a two-line poem about rain.", "Explain what a hash map is in one sentence.",
               "List three  prime numbers\n", "Translate 'good morning' to German."]
_UF_CHOSEN = ["  Rain taps the window,\nthe garden drinks deep.",
              "A hash map stores key-value pairs and finds a value from its key in constant average time.",
              "2, 3 and 5.", "Guten Morgen!"]
_UF_REJECTED = ["Rain is wet.", "It is a map.", "1, 4, 9", "Good morning in German is Bonjour."]

# HuggingFaceH4/ultrafeedback_binarized: `prompt` a string; `chosen`/`rejected` full message
# lists that start with the prompt's user turn; `messages` (= chosen), scores and `prompt_id`.
H4_ULTRAFEEDBACK = [
    {"prompt": p, "prompt_id": f"{i:064x}",
     "chosen": [_msg("user", p), _msg("assistant", c)], "rejected": [_msg("user", p), _msg("assistant", r)],
     "messages": [_msg("user", p), _msg("assistant", c)], "score_chosen": 8.0 - i / 2, "score_rejected": 3.0 + i / 4}
    for i, (p, c, r) in enumerate(zip(_UF_PROMPTS, _UF_CHOSEN, _UF_REJECTED))]

# trl-lib/ultrafeedback_binarized: no `prompt`; conversational `chosen`/`rejected` whose shared
# user turn is the implicit prompt; scores kept as extra columns.
TRL_ULTRAFEEDBACK = [
    {"chosen": [_msg("user", p), _msg("assistant", c)], "rejected": [_msg("user", p), _msg("assistant", r)],
     "score_chosen": 9.0 - i, "score_rejected": 2.0 + i}
    for i, (p, c, r) in enumerate(zip(_UF_PROMPTS, _UF_CHOSEN, _UF_REJECTED))]

# trl-lib/hh-rlhf-helpful-base (conversational, implicit prompt): multi-turn message lists that
# differ only in the final assistant turn.
TRL_HH_HELPFUL = [
    {"chosen": [_msg("user", "How do I boil an egg?"), _msg("assistant", "Put it in boiling water for 9 minutes.")],
     "rejected": [_msg("user", "How do I boil an egg?"), _msg("assistant", "Eggs come from chickens.")]},
    {"chosen": [_msg("user", "I need a name for my cat."), _msg("assistant", "What does she look like?"),
                _msg("user", "Grey,  fluffy, very lazy.\n"), _msg("assistant", "How about Cloud?")],
     "rejected": [_msg("user", "I need a name for my cat."), _msg("assistant", "What does she look like?"),
                  _msg("user", "Grey,  fluffy, very lazy.\n"), _msg("assistant", "Cat.")]},
    {"chosen": [_msg("user", "Qu'est-ce qu'un « croissant » ?"), _msg("assistant", "Une viennoiserie feuilletée. 🥐")],
     "rejected": [_msg("user", "Qu'est-ce qu'un « croissant » ?"), _msg("assistant", "Un pain.")]},
]

# trl-lib/Capybara: SFT `messages` (multi-turn), plus a `source` column.
CAPYBARA = [
    {"source": "General-Instruct", "messages": [
        _msg("user", "Summarise the plot of Hamlet in one line."),
        _msg("assistant", "A Danish prince avenges his father's murder, and nearly everyone dies."),
        _msg("user", "Now in five words."), _msg("assistant", "Prince avenges father; all die.")]},
    {"source": "Know-Logic", "messages": [
        _msg("user", "What is the boiling point of water at sea level?\n\n"),
        _msg("assistant", "100 °C (212 °F).")]},
    {"source": "EverythingLM", "messages": [
        _msg("user", "Write   a limerick about a 猫."),
        _msg("assistant", "A 猫 with a taste for the sea\nsailed off with a biscuit and tea.\n")]},
]

# OpenAssistant-style conversations as `messages`, with a system turn and per-message extra keys.
OASST_MESSAGES = [
    {"messages": [_msg("system", "You are a friendly assistant."),
                  {"role": "user", "content": "Hi! Any tips for learning to juggle?", "lang": "en"},
                  {"role": "assistant", "content": "Start with one ball, then two.  Practise over a bed.",
                   "lang": "en"}]},
    {"messages": [{"role": "user", "content": "Was ist die Hauptstadt von Österreich?", "lang": "de"},
                  {"role": "assistant", "content": "  Wien.", "lang": "de"},
                  {"role": "user", "content": "Und von der Schweiz?\t", "lang": "de"},
                  {"role": "assistant", "content": "Bern (Bundesstadt).", "lang": "de"}]},
]

# A math prompt set for GRPO: `prompt` a string, `answer` the reference answer column.
MATH_PROMPTS = [
    {"prompt": "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:", "answer": "7"},
    {"prompt": "Question: What is 12 × 12?\nAnswer: ", "answer": "144"},
    {"prompt": "Solve for x:  2x + 6 = 10.\n", "answer": "x = 2"},
    {"prompt": "Question: A train travels 60 km in 1.5 h. What is its speed in km/h?\n\nAnswer:", "answer": "40"},
]

# name -> (loader: "preference" | "sft" | "prompts", rows)
LAYOUTS = {
    "anthropic_hh_rlhf": ("preference", HH_RLHF),
    "h4_ultrafeedback_binarized": ("preference", H4_ULTRAFEEDBACK),
    "trl_ultrafeedback_binarized": ("preference", TRL_ULTRAFEEDBACK),
    "trl_hh_rlhf_helpful_base": ("preference", TRL_HH_HELPFUL),
    "trl_capybara": ("sft", CAPYBARA),
    "oasst_messages": ("sft", OASST_MESSAGES),
    "math_prompts": ("prompts", MATH_PROMPTS),
}


def write_layouts(folder) -> dict[str, Path]:
    """Write every layout as ``<folder>/<name>.jsonl``; returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (_, rows) in LAYOUTS.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


def all_texts() -> list[str]:
    """Every string in every layout (for training tokenizers)."""
    out: list[str] = []

    def walk(value):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            list(map(walk, value.values()))
        elif isinstance(value, list):
            list(map(walk, value))
    walk([rows for _, rows in LAYOUTS.values()])
    return out


# ----------------------------------------------------------------------------- tokenizers

CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Llama 3's pre-tokenizer split: punctuation takes the newlines after it (":\n\n" is one piece).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
STYLES = {
    "chatml": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|system|>"], "template": CHATML_TEMPLATE,
               "eos": "<|im_end|>", "pad": "<|endoftext|>", "bos": None},
    "llama3": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<|finetune_right_pad_id|>"], "template": LLAMA3_TEMPLATE,
               "eos": "<|eot_id|>", "pad": "<|finetune_right_pad_id|>", "bos": "<|begin_of_text|>"},
}

_EXTRA_TEXT = ["system user assistant Human: Assistant: Question: Answer: The the a an is of to and in",
               "<|im_start|>system <|start_header_id|>system<|end_header_id|> ignore all previous instructions",
               # indented lists, so that GPT-2-style BPE learns the newline+space token "ĊĠ" (real vocabularies have it)
               "steps:" + "\n  - item" * 30]


def byte_level_bpe(style: str, texts: list[str] | None = None, vocab_size: int = 800):
    """A byte-level BPE fast tokenizer trained on ``texts`` (default: every layout's text).

    ``"chatml"``: GPT-2's pre-tokenizer, no BOS, ChatML template (EOS ``<|im_end|>``).
    ``"llama3"``: Llama 3's split regex, BOS ``<|begin_of_text|>`` added to strings, header template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = STYLES[style]
    core = Tokenizer(models.BPE())
    if style == "llama3":
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator((texts if texts is not None else all_texts()) + _EXTRA_TEXT, trainer)
    if spec["bos"]:
        core.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B",
            special_tokens=[(spec["bos"], core.token_to_id(spec["bos"]))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=spec["eos"], pad_token=spec["pad"],
                                  bos_token=spec["bos"])
    tok.add_special_tokens({"additional_special_tokens": [s for s in spec["specials"]
                                                          if s not in (spec["eos"], spec["pad"], spec["bos"])]})
    tok.chat_template = spec["template"]
    return tok


def trained_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive ids whose loss mask is 1 (the trained spans, in order)."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs, cur = runs + [cur], []
    return runs + [cur] if cur else runs
