"""Tokenisation with loss masks, truncation, and collation into padded batches.

String data is used as written (prompt + completion + EOS), conversational data goes through the
tokenizer's own chat template, as TRL does. A response's tokens are found by rendering the
conversation up to the assistant turn with ``add_generation_prompt=True`` and taking what the
full rendering adds, so the loss mask covers exactly the assistant's text and end-of-turn marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import DataError
from .formats import PreferenceExample, SFTExample


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


def conversation_segments(tokenizer, messages: list[dict]) -> list[tuple[list[int], bool]]:
    """Split a rendered conversation into (ids, is_assistant) pieces, in order."""
    pieces, done = [], ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError("the chat template does not render conversations as growing prefixes; "
                             "cannot locate the assistant turns for the loss mask")
        pieces += [(_ids(tokenizer, prefix[len(done):]), False), (_ids(tokenizer, full[len(prefix):]), True)]
        done = full
    rest = _render(tokenizer, messages, add_generation_prompt=False)[len(done):]
    if rest:
        pieces.append((_ids(tokenizer, rest), False))
    return [(ids, train) for ids, train in pieces if ids]


def prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Ids a response is appended to: chat-rendered with the generation prompt, or the string with BOS."""
    if isinstance(prompt, list):
        return _ids(tokenizer, _render(tokenizer, prompt, add_generation_prompt=True))
    return _ids(tokenizer, prompt, specials=True)


def response_ids(tokenizer, prompt: str | list[dict], response: str | list[dict]) -> list[int]:
    """Ids of the response alone, ending in EOS (string) or the template's end-of-turn (chat)."""
    if isinstance(response, list):
        prefix = _render(tokenizer, prompt, add_generation_prompt=True)
        full = _render(tokenizer, prompt + response, add_generation_prompt=False)
        return _ids(tokenizer, full[len(prefix):])
    return _with_eos(tokenizer, _ids(tokenizer, response))


def tokenize_sft(examples: list[SFTExample], tokenizer, max_length: int,
                 completion_only: bool = True) -> tuple[list[Tokenized], int]:
    """Tokenise SFT examples; returns (examples, how many were truncated to ``max_length``)."""
    out, truncated = [], 0
    for ex in examples:
        if ex.kind == "text":
            segments = [(_with_eos(tokenizer, _ids(tokenizer, ex.text, specials=True)), True)]
        elif ex.kind == "messages":
            segments = conversation_segments(tokenizer, ex.messages)
        else:
            segments = [(prompt_ids(tokenizer, ex.prompt), False),
                        (response_ids(tokenizer, ex.prompt, ex.completion), True)]
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
        p = prompt_ids(tokenizer, ex.prompt)
        c = response_ids(tokenizer, ex.prompt, ex.chosen)
        r = response_ids(tokenizer, ex.prompt, ex.rejected)
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
