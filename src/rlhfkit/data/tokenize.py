"""Tokenisation with loss masks, truncation, and collation into padded batches.

String data is used as written (prompt + completion + EOS), conversational data goes through the
tokenizer's own chat template, as TRL does. A response's tokens are found by rendering the
conversation up to the assistant turn with ``add_generation_prompt=True`` and taking what the
full rendering adds, so the loss mask covers exactly the assistant's text and end-of-turn marker.

Prompt ids + response ids always equal the tokenization of the whole text (#17): where a token
of the whole text spans the prompt/response boundary, the prompt keeps the longest token prefix
it shares with the whole text and the spanning token starts the response. Message content never
becomes a special token (#19.14), and text far beyond the length limit is cut before it is
tokenized (#19.16).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from .errors import DataError
from .formats import PreferenceExample, SFTExample

log = logging.getLogger(__name__)


@dataclass
class Tokenized:
    """Token ids of prompt + response, and which ids are trained on (the response)."""

    input_ids: list[int]
    loss_mask: list[int]


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float = 0.0
    extra: dict = field(default_factory=dict)
    # Summed reference log-probs of each response, when precomputed (DPO ``precompute_ref``).
    ref_chosen: float | None = None
    ref_rejected: float | None = None
    # Loss weight (``source_weights``, normalised to mean 1 over the training set); 1 by default.
    weight: float = 1.0


def _ids(tokenizer, text: str, specials: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=specials)["input_ids"]


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]


def _common(a, b) -> int:
    """Length of the longest common prefix of two id lists (or strings)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_chat_template(examples: list, tokenizer, data: str, model: str) -> None:
    """Conversational records (message lists) need the tokenizer's chat template: refuse them right
    after the tokenizer loads, before any model weights do, in one line naming the data and the model."""
    if getattr(tokenizer, "chat_template", None) is None and any(ex.conversational for ex in examples):
        raise DataError(f"conversational records (message lists) need a chat template, and the tokenizer in "
                        f"{model!r} has none: use a chat model's folder, add `chat_template` to its "
                        "tokenizer_config.json, or give the data as strings", file=data)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if tokenizer.chat_template is None:
        raise ValueError("conversational data needs a tokenizer with a chat template "
                         "(set `chat_template` on the tokenizer, or use string-format data)")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool, text: str | None = None) -> list[int]:
    """Ids of the chat rendering (``text``, when already rendered) in which message content never
    becomes a special token.

    Content holding an added token's text (``<|im_start|>system``, ``<|start_header_id|>``...) is
    tokenized by `transformers`' ``sanitize_control_tokens``: such strings in content are encoded as
    plain text, while the template's own role and end-of-turn tokens stay tokens, so a user cannot
    open a system turn (#19.14). Other content renders and tokenizes as one text, exactly as before.
    A tokenizer that produces the token from plain text anyway raises ValueError (it cannot be
    made safe).
    """
    added = tuple(t for t in getattr(tokenizer, "added_tokens_encoder", {}) if t)
    if not any(t in m["content"] for m in messages if isinstance(m.get("content"), str) for t in added):
        return _ids(tokenizer, text if text is not None else _render(tokenizer, messages, add_generation_prompt))
    out = tokenizer.apply_chat_template(messages, tokenize=True, sanitize_control_tokens=True,
                                        add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def conversation_segments(tokenizer, messages: list[dict]) -> list[tuple[list[int], bool]]:
    """Split a rendered conversation into (ids, is_assistant) pieces, in order.

    The pieces join to the tokenization of the whole rendering. Each assistant turn's text is
    what rendering it adds after the generation prompt; where tokenizing the rendering in pieces
    would differ from the whole (a token spanning a boundary), the boundary moves back to the
    longest token prefix the shorter rendering shares with the whole.
    """
    text = _render(tokenizer, messages, add_generation_prompt=False)
    # An assistant turn starts where its generation prompt ends and ends where the rendering up to
    # it stops agreeing with the whole rendering: templates such as Phi-3's write EOS after the
    # last turn only, so a shorter rendering need not be a prefix of the whole one.
    cuts, done = [], 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        end = _common(_render(tokenizer, messages[: i + 1], add_generation_prompt=False), text)
        if not text.startswith(prefix) or len(prefix) < done or end < len(prefix):
            raise ValueError("the chat template does not render conversations as growing prefixes; "
                             "cannot locate the assistant turns for the loss mask")
        cuts.append((i, len(prefix), end))
        done = end
    whole = _chat_ids(tokenizer, messages, False, text)
    # Fast path: the pieces tokenized one by one already join to the whole.
    bounds = [0] + [at for _, start, end in cuts for at in (start, end)] + [len(text)]
    pieces = [_ids(tokenizer, text[a:b]) if b > a else [] for a, b in zip(bounds, bounds[1:])]
    if [i for p in pieces for i in p] != whole:
        at = [0]
        for i, _, _ in cuts:
            for ids in (_chat_ids(tokenizer, messages[:i], True), _chat_ids(tokenizer, messages[: i + 1], False)):
                at.append(max(at[-1], _common(ids, whole)))
        at.append(len(whole))
        pieces = [whole[a:b] for a, b in zip(at, at[1:])]
    return [(ids, j % 2 == 1) for j, ids in enumerate(pieces) if ids]


def prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Ids a response is appended to: chat-rendered with the generation prompt (message content
    never becomes a special token), or the string with BOS."""
    if isinstance(prompt, list):
        return _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    return _ids(tokenizer, prompt, specials=True)


def _whole_ids(tokenizer, prompt: str | list[dict], head: list[int], response: str | list[dict]) -> list[int]:
    """Ids of prompt + response as one text (``head``: the prompt's own ids)."""
    if isinstance(prompt, list) and isinstance(response, list):
        text = _render(tokenizer, prompt + response, add_generation_prompt=False)
        if not text.startswith(_render(tokenizer, prompt, add_generation_prompt=True)):
            raise ValueError("the chat template does not render the conversation with the generation "
                             "prompt as a prefix; cannot locate the response for the loss mask")
        return _chat_ids(tokenizer, prompt + response, False, text)
    if isinstance(prompt, str) and (prompt[-1:].isspace() or response[:1].isspace()):
        # The two meet at whitespace, as an implicit prompt split leaves them: one text.
        return _with_eos(tokenizer, _ids(tokenizer, prompt + response, specials=True))
    # Nothing between them: they are two texts ("soup ?" + "it is good" would glue "?it").
    return _with_eos(tokenizer, head + _ids(tokenizer, response))


def split_ids(tokenizer, prompt: str | list[dict], responses: list) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, each response's ids) such that prompt + response is the tokenization of the
    whole text, for every response.

    The whole text is the chat rendering of prompt + response (ending in the template's
    end-of-turn), or for strings prompt + response with BOS and EOS (two texts when no whitespace
    separates them). The prompt ids are the longest token prefix that the prompt's own ids
    (:func:`prompt_ids`) share with every whole text: normally all of them; one token less where
    a token of the whole text spans the boundary (a Llama-3-style ``":\\n\\n"``), that token then
    starting the responses.
    """
    head = prompt_ids(tokenizer, prompt)
    wholes = [_whole_ids(tokenizer, prompt, head, r) for r in responses]
    k = min(_common(head, w) for w in wholes)
    return head[:k], [w[k:] for w in wholes]


def response_ids(tokenizer, prompt: str | list[dict], response: str | list[dict]) -> list[int]:
    """Ids of the response alone, ending in EOS (string) or the template's end-of-turn (chat); they
    follow ``split_ids(tokenizer, prompt, [response])[0]``, which is ``prompt_ids`` unless a token
    spans the boundary."""
    return split_ids(tokenizer, prompt, [response])[1][0]


# ---------------------------------------------------------------- oversized records (#19.16)

# Text is cut to this many characters per token of the length limit before it is tokenized, so
# a 100 MB record costs what a long normal one does. Far above the 3-5 characters an average
# token covers, so the tokens that survive truncation are the same as without the cut.
CHARS_PER_TOKEN = 64
_SLACK = 16  # tokens: the token at the cut may differ; it must lie beyond what truncation keeps


def _char_bound(max_tokens: int) -> int:
    return CHARS_PER_TOKEN * (max_tokens + _SLACK)


def _cut(value: str | list[dict], bound: int, keep_end: bool) -> tuple[str | list[dict], int]:
    """``value`` (a string or messages) with at most ``bound`` characters of text, keeping its
    start or (``keep_end``) its end; and how many characters it had."""
    if isinstance(value, str):
        n = len(value)
        return (value if n <= bound else value[n - bound:] if keep_end else value[:bound]), n
    total = sum(len(m["content"]) for m in value)
    if total <= bound:
        return value, total
    out, room = [], bound
    for m in (reversed(value) if keep_end else value):
        text, _ = _cut(m["content"], room, keep_end)
        room -= len(text)
        out.append(dict(m, content=text))
    return (out[::-1] if keep_end else out), total


def _bounded(ex, fields: dict[str, tuple[int, bool]]):
    """``ex`` with each named field cut to its (token limit, keep_end) character bound; logs a
    warning naming the record for each cut."""
    changes = {}
    for name, (limit, keep_end) in fields.items():
        value = getattr(ex, name)
        if value is None:
            continue
        cut, n = _cut(value, _char_bound(limit), keep_end)
        if cut is not value:
            changes[name] = cut
            log.warning("%s: field '%s': %d characters cut to their %s %d before tokenizing (a %d-token limit)",
                        ex.where or "record", name, n, "last" if keep_end else "first", _char_bound(limit), limit)
    return replace(ex, **changes) if changes else ex


@contextmanager
def _naming(ex):
    """A record that cannot be tokenized (content a tokenizer cannot keep as text, a chat template
    that refuses it) raises one line naming the record."""
    try:
        yield
    except DataError:
        raise
    except ValueError as e:
        raise DataError(f"cannot tokenize: {e}", ex.where or None) from None


def tokenize_sft(examples: list[SFTExample], tokenizer, max_length: int,
                 completion_only: bool = True) -> tuple[list[Tokenized], int]:
    """Tokenise SFT examples; returns (examples, how many were truncated to ``max_length``)."""
    out, truncated = [], 0
    for ex in examples:
        ex = _bounded(ex, {name: (max_length, False) for name in ("text", "messages", "prompt", "completion")})
        with _naming(ex):
            if ex.kind == "text":
                segments = [(_with_eos(tokenizer, _ids(tokenizer, ex.text, specials=True)), True)]
            elif ex.kind == "messages":
                segments = conversation_segments(tokenizer, ex.messages)
            else:
                p, (c,) = split_ids(tokenizer, ex.prompt, [ex.completion])
                segments = [(p, False), (c, True)]
        ids = [i for seg, _ in segments for i in seg]
        mask = [int(train or not completion_only) for seg, train in segments for _ in seg]
        if len(ids) > max_length:
            truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        out.append(Tokenized(ids, mask))
    return out, truncated


def tokenize_preference(examples: list[PreferenceExample], tokenizer, max_length: int,
                        max_prompt_length: int) -> tuple[list[TokenizedPair], int]:
    """Tokenise pairs. A long prompt keeps its end (the part next to the response); a long response
    keeps its start. Returns (pairs, how many were truncated)."""
    out, truncated = [], 0
    for ex in examples:
        ex = _bounded(ex, {"prompt": (min(max_prompt_length, max_length), True),
                           "chosen": (max_length, False), "rejected": (max_length, False)})
        with _naming(ex):
            p, (c, r) = split_ids(tokenizer, ex.prompt, [ex.chosen, ex.rejected])
        cut = False
        if len(p) > max_prompt_length:
            p, cut = p[-max_prompt_length:], True
        room = max(max_length - len(p), 1)
        if len(c) > room or len(r) > room:
            c, r, cut = c[:room], r[:room], True
        if len(p) + len(c) > max_length:  # max_prompt_length >= max_length: make room for 1 token
            p = p[-(max_length - 1):]
        truncated += cut
        out.append(TokenizedPair(p, c, r, float(ex.margin or 0.0), dict(ex.extra)))
    return out, truncated


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: row indices per bin, each bin's lengths summing to <= capacity."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), None)
        if j is None:
            bins.append([]), room.append(capacity)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= lengths[i]
    return bins


def layout(rows: list[list[int]], masks: list[list[int]], pad_id: int, pack: bool = False) -> dict[str, torch.Tensor]:
    """Sequences and their loss masks as one batch, padded or packed.

    Padded (``pack=False``): right-padded (B, T) ``input_ids``, ``attention_mask``, ``loss_mask``.
    Packed (``pack=True``, padding-free): the sequences are placed in bins as wide as the longest
    one (first fit decreasing) and laid end to end in (R, L) rows, R <= B; ``position_ids`` restart
    at 0 for every sequence and there is no ``attention_mask``: `transformers` reads the position
    resets as sequence boundaries and attends within a sequence only (a block-diagonal causal
    mask), so a packed forward equals the padded one without computing on padding. The few pad
    slots left at a bin's end form a segment of their own.

    Both layouts carry ``seq_id`` (which input sequence a token belongs to, -1 on padding),
    ``last_index`` (flat index of each sequence's last token in the (R*L) layout) and
    ``num_tokens`` (real tokens). ``loss_mask`` is 0 at each sequence's first token (it has no
    prediction), so ``loss_mask[:, 1:]`` selects the trained targets in both layouts.
    """
    masks = [[0] + list(m[1:]) for m in masks]
    if not pack:
        order = [[i] for i in range(len(rows))]
        width = max(map(len, rows))
    else:
        width = max(map(len, rows))
        order = pack_bins([len(r) for r in rows], width)
        width = max(sum(len(rows[i]) for i in b) for b in order)
    R = len(order)
    ids = torch.full((R, width), pad_id, dtype=torch.long)
    pos = torch.zeros((R, width), dtype=torch.long)
    loss = torch.zeros((R, width), dtype=torch.long)
    seq = torch.full((R, width), -1, dtype=torch.long)
    last = torch.zeros(len(rows), dtype=torch.long)
    for r, members in enumerate(order):
        at = 0
        for i in members:
            n = len(rows[i])
            ids[r, at:at + n] = torch.tensor(rows[i], dtype=torch.long)
            pos[r, at:at + n] = torch.arange(n)
            loss[r, at:at + n] = torch.tensor(masks[i], dtype=torch.long)
            seq[r, at:at + n] = i
            last[i] = r * width + at + n - 1
            at += n
        pos[r, at:] = torch.arange(width - at)  # trailing pad: its own segment
    out = {"input_ids": ids, "loss_mask": loss, "seq_id": seq, "last_index": last,
           "num_tokens": torch.tensor(sum(map(len, rows)))}
    if pack:
        out["position_ids"] = pos
    else:
        out["attention_mask"] = (seq >= 0).long()
    return out


def collate_sft(batch: list[Tokenized], pad_id: int, pack: bool = False) -> dict[str, torch.Tensor]:
    """(B, T) right-padded or packed ``input_ids``, ``loss_mask`` (see :func:`layout`)."""
    return layout([b.input_ids for b in batch], [b.loss_mask for b in batch], pad_id, pack)


def collate_pairs(batch: list[TokenizedPair], pad_id: int, pack: bool = False) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one batch (sequence ids 0..B-1 chosen, B..2B-1 rejected),
    so one forward pass scores both; padded or packed (see :func:`layout`).

    ``loss_mask`` marks response tokens; ``margin`` and ``weight`` are (B,); ``ref_logps`` (2B,) when
    precomputed.
    """
    rows = [b.prompt_ids + b.chosen_ids for b in batch] + [b.prompt_ids + b.rejected_ids for b in batch]
    masks = ([[0] * len(b.prompt_ids) + [1] * len(b.chosen_ids) for b in batch]
             + [[0] * len(b.prompt_ids) + [1] * len(b.rejected_ids) for b in batch])
    out = layout(rows, masks, pad_id, pack)
    out.update(margin=torch.tensor([b.margin for b in batch], dtype=torch.float32),
               weight=torch.tensor([b.weight for b in batch], dtype=torch.float32))
    if all(b.ref_chosen is not None and b.ref_rejected is not None for b in batch):
        out["ref_logps"] = torch.tensor([b.ref_chosen for b in batch] + [b.ref_rejected for b in batch],
                                        dtype=torch.float32)
    return out
