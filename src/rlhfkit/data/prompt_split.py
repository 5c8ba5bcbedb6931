"""Where the prompt of a preference pair ends when the record does not say.

Three cases, each as TRL reads them: a string prompt whose chosen/rejected hold the whole
conversation (UltraFeedback: the prompt becomes the message prefix both share), completions that
repeat the prompt turns, and the implicit-prompt form {chosen, rejected} (hh-rlhf), where the
prompt is the start both share, cut at a word boundary and refused when what is left is not one
assistant reply.
"""

from __future__ import annotations

from .errors import DataError


def prompt_from_prefix(prompt: str, chosen: list[dict], rejected: list[dict], where):
    """A string prompt with chosen/rejected holding the whole conversation (as in
    HuggingFaceH4/ultrafeedback_binarized): the prompt becomes the message prefix both share,
    whose first user message must be that string. No shared prefix: returned unchanged."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        return prompt, chosen, rejected
    if chosen == rejected:
        raise DataError.at(where, "identical to 'chosen'", "rejected")
    first_user = next((m["content"] for m in chosen[:n] if m["role"] == "user"), None)
    if first_user is None or first_user.strip() != prompt.strip():
        raise DataError.at(where, "differs from the first user message that 'chosen' and 'rejected' start with",
                           "prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def strip_prompt(prompt: list[dict], completion: list[dict]) -> list[dict]:
    # Some datasets repeat the prompt turns at the start of each completion;
    # a completion that starts with the full prompt is the whole conversation.
    n = len(prompt)
    return completion[n:] if completion[:n] == prompt else completion


def _word_prefix(a: str, b: str) -> int:
    """Where the shared prompt of texts a and b ends: their longest common prefix, cut back to
    before the whitespace that precedes the word in which they part.

    A shared partial word ("Th" of "The"/"This") stays in the responses, and so does the
    separating whitespace (as TRL's ``extract_prompt`` does): "...Assistant: Sure" splits into
    "...Assistant:" and " Sure", which tokenize like the whole text (" Sure" is one token in
    byte-level BPE vocabularies; a prompt ending in a space would end in a lone space token).
    """
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on slice equality: C-speed on multi-megabyte records
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    n = lo
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    while n > 0 and a[n - 1].isspace():
        n -= 1
    return n


TURN_MARKERS = ("Human:", "Assistant:")  # Anthropic hh-rlhf transcripts


def _turn_problem(rest: str, start: bool) -> str | None:
    """Why a string response cut from a transcript is not one assistant reply, or None: empty,
    ending in an empty turn marker, or (``start``) starting a new turn."""
    text = rest.strip()
    if not text:
        return "nothing left after removing the prompt shared with the other response"
    last_line = text.rsplit("\n", 1)[-1].strip()
    if last_line in TURN_MARKERS:
        return f"ends with an empty final '{last_line}' turn"
    marker = next((m for m in TURN_MARKERS if text.startswith(m)), None)
    if start and marker is not None:
        return (f"starts a new '{marker}' turn after the shared prompt (the two transcripts part "
                "before that turn's text)")
    return None


def split_implicit(chosen, rejected, where):
    """(prompt, chosen, rejected) from an implicit-prompt pair: the prompt is the shared start."""
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
    else:
        n = _word_prefix(chosen, rejected)
    prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if not prompt:
        raise DataError.at(where, "no prompt: without a 'prompt' key, 'chosen' and 'rejected' must start "
                          "with the same prompt", "prompt")
    for start in (False, True):  # name the empty turn before the turn it shifted the split into
        for name, rest in (("chosen", chosen), ("rejected", rejected)):
            if not rest:
                raise DataError.at(where, "nothing left after removing the prompt shared with the other response", name)
            problem = _turn_problem(rest, start) if isinstance(rest, str) else None
            if problem:
                raise DataError.at(where, problem, name)
    return prompt, chosen, rejected
