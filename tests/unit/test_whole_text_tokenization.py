"""Prompt ids + response ids == the tokenization of the whole text, on real dataset layouts (#17).

Every row of every layout in ``tests/real_layouts.py`` is loaded with the loaders users call and
tokenized as training does, with three tokenizers: the word-level test tokenizer, and two byte-level
BPE tokenizers trained here (space-prefixed tokens like "ĠSure"), one with GPT-2's pre-tokenizer and a
ChatML template, one with Llama 3's pre-tokenizer (punctuation takes the newlines after it), BOS and
header template. The whole text is:

- string pairs (Anthropic hh-rlhf): the transcript itself, tokenized with BOS, plus EOS;
- conversations: the chat template's rendering of the whole conversation, tokenized as one text;
- prompt-only (math): prompt + the answer as a model would continue it, with BOS, plus EOS.

Exact equality holds everywhere, chat templates included. The one documented boundary effect is
between the *training* prompt ids and the *generation* prompt ids (``prompt_ids``, what sampling
and serving feed the model): where a token of the whole text spans the prompt/response boundary,
the training prompt is the generation prompt less that one token, which starts the response
instead (``check_boundary``; counts per layout and tokenizer in ``MOVED_TOKENS``). It happens when
a string prompt ends in a space the whole text joins to the next word ("Answer: " + "144" ->
"Ġ144"), or when ChatML's "assistant\n" meets a reply that starts with spaces ("\n " -> "ĊĠ").
"""

import pytest

from real_layouts import LAYOUTS, all_texts, byte_level_bpe, trained_runs, write_layouts
from rlhfkit.data import DataError, Location, load_preference, load_prompts, load_sft, parse_preference
from rlhfkit.data.tokenize import prompt_ids, split_ids, tokenize_preference, tokenize_sft
from rlhfkit.tiny_models import build_word_tokenizer

TOKENIZERS = ("word", "chatml", "llama3")
BIG = 4096  # no truncation


@pytest.fixture(scope="module")
def toks():
    return {"word": build_word_tokenizer(all_texts()), "chatml": byte_level_bpe("chatml"),
            "llama3": byte_level_bpe("llama3")}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("layouts"))


def whole_string(tok, text: str) -> list[int]:
    ids = tok(text, add_special_tokens=True)["input_ids"]
    return ids + [tok.eos_token_id]


def whole_chat(tok, messages: list[dict]) -> list[int]:
    return tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def check_boundary(tok, train_prompt: list[int], gen_prompt: list[int], first_response_id: int) -> int:
    """The training prompt is the generation prompt, or it less its last token, which the whole
    text's first response token then extends (it decodes to that token's text and more).
    Returns how many tokens moved (0 or 1)."""
    if train_prompt == gen_prompt:
        return 0
    assert train_prompt == gen_prompt[:-1], "more than one boundary token moved"
    moved, first = tok.decode([gen_prompt[-1]]), tok.decode([first_response_id])
    assert first.startswith(moved) and len(first) > len(moved), (moved, first)
    return 1


def _check_preference(tok, path, rows):
    examples = load_preference(str(path))
    pairs, n_cut = tokenize_preference(examples, tok, BIG, BIG)
    assert n_cut == 0 and len(pairs) == len(rows)
    moved = 0
    for ex, pair, row in zip(examples, pairs, rows):
        for name, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            if isinstance(row[name], str):  # implicit string prompt: the split loses no character
                assert ex.prompt + getattr(ex, name) == row[name]
                whole = whole_string(tok, row[name])
            else:  # every conversational layout holds the whole conversation in chosen/rejected
                assert ex.prompt + getattr(ex, name) == row[name]
                whole = whole_chat(tok, row[name])
            assert pair.prompt_ids + ids == whole, (name, tok.convert_ids_to_tokens(pair.prompt_ids[-3:]),
                                                    tok.convert_ids_to_tokens(ids[:3]))
        moved += check_boundary(tok, pair.prompt_ids, prompt_ids(tok, ex.prompt), pair.chosen_ids[0])
    return moved




def _check_sft(tok, path, rows):
    examples = load_sft(str(path))
    got, n_cut = tokenize_sft(examples, tok, BIG)
    assert n_cut == 0
    for t, row in zip(got, rows):
        assert t.input_ids == whole_chat(tok, row["messages"])
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        runs = trained_runs(t.input_ids, t.loss_mask)
        assert len(runs) == len(replies)
        for run, reply in zip(runs, replies):  # each trained run is one whole reply (and end of turn)
            assert " ".join(reply.split()) in " ".join(tok.decode(run).split())


def _check_prompts(tok, path, rows) -> int:
    examples = load_prompts(str(path))
    moved = 0
    for ex, row in zip(examples, rows):
        response = row["answer"] if ex.prompt[-1].isspace() else " " + row["answer"]
        head, (tail,) = split_ids(tok, ex.prompt, [response])
        assert head + tail == whole_string(tok, ex.prompt + response)
        moved += check_boundary(tok, head, prompt_ids(tok, ex.prompt), tail[0])
    return moved


# Boundary tokens moved from the generation prompt to the response, per (layout, tokenizer); 0 elsewhere.
# - math: the one prompt ending in a space ("Answer: " + "144"): GPT-2's pre-tokenizer joins the space
#   to the digits (" 144"); Llama 3's keeps digits apart (" " then "144"); the word tokenizer drops spaces.
# - ultrafeedback: the reply "  Rain taps..." starts with two spaces; in ChatML's "assistant\n" + reply
#   GPT-2's pre-tokenizer makes "\n " one piece ("ĊĠ"), so the template's last token starts the reply.
#   The Llama 3 template trims content, and the word tokenizer drops spaces.
MOVED_TOKENS = {("math_prompts", "chatml"): 1, ("trl_ultrafeedback_binarized", "chatml"): 1,
                ("h4_ultrafeedback_binarized", "chatml"): 1}

CASES = [pytest.param(layout, name, id=f"{layout}-{name}") for layout in LAYOUTS for name in TOKENIZERS]


@pytest.mark.parametrize("layout, tok_name", CASES)
def test_prompt_plus_response_is_whole_text(toks, paths, layout, tok_name):
    tok, (kind, rows) = toks[tok_name], LAYOUTS[layout]
    if kind == "preference":
        assert _check_preference(tok, paths[layout], rows) == MOVED_TOKENS.get((layout, tok_name), 0)
    elif kind == "sft":
        _check_sft(tok, paths[layout], rows)
    else:
        assert _check_prompts(tok, paths[layout], rows) == MOVED_TOKENS.get((layout, tok_name), 0)


def test_hh_rlhf_response_starts_with_its_space_token(toks):
    """The defect (#17.1): the prompt ended in a lone 'Ġ' and the reply started with space-less 'Put'."""
    tok = toks["chatml"]
    (pair,), _ = tokenize_preference([parse_preference(LAYOUTS["anthropic_hh_rlhf"][1][0])], tok, BIG, BIG)
    assert tok.convert_ids_to_tokens(pair.prompt_ids[-2:]) == ["Assistant", ":"]
    assert tok.convert_ids_to_tokens(pair.chosen_ids[:1]) == ["ĠPut"]


# ----------------------------------------------------------------- empty final turns (#17.2)

WHERE = Location("hh.jsonl", 3)
HI = "\n\nHuman: hi"


@pytest.mark.parametrize("chosen, rejected, field, message", [
    # chosen's last turn is empty: the split shifted before "Assistant:" and both replies started it
    (HI + "\n\nAssistant:", HI + "\n\nAssistant: Hello there", "chosen",
     "ends with an empty final 'Assistant:' turn"),
    # rejected's final turn holds only whitespace: the split keeps "Assistant:" in the prompt
    (HI + "\n\nAssistant: Hello there", HI + "\n\nAssistant:  \n", "rejected",
     "nothing left after removing the prompt shared with the other response"),
    # both end with an empty Assistant turn after a Human follow-up
    (HI + "\n\nAssistant: Sure\n\nHuman: ok\n\nAssistant:", HI + "\n\nAssistant: No\n\nHuman: ok\n\nAssistant:",
     "chosen", "ends with an empty final 'Assistant:' turn"),
    # the transcripts part at a turn marker: the replies are new turns, not the assistant's answer
    (HI + "\n\nAssistant: Hello\n\nHuman: bye", HI + "\n\nAssistant: Hello\n\nAssistant: again", "chosen",
     "starts a new 'Human:' turn after the shared prompt (the two transcripts part before that turn's text)"),
])
def test_empty_or_shifted_assistant_turn_is_refused(chosen, rejected, field, message):
    with pytest.raises(DataError) as info:
        parse_preference({"chosen": chosen, "rejected": rejected}, WHERE)
    assert str(info.value) == f"hh.jsonl:3: field '{field}': {message}"


def test_hh_prompt_ends_at_the_assistant_marker():
    ex = parse_preference({"chosen": HI + "\n\nAssistant:  Two  spaces", "rejected": HI + "\n\nAssistant: One"})
    assert (ex.prompt, ex.chosen, ex.rejected) == (HI + "\n\nAssistant:", "  Two  spaces", " One")
