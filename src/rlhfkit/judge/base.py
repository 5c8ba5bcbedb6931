"""One judge interface, both-order comparison, and the bias statistics of a judging run.

A judge answers one question: for ordered items (prompt, first, second, principles), the
probability that the response shown *first* (as "Response A") is better, ``prob_first(items)``.
Everything else is built on that:

- ``compare`` asks in both orders: p1 = P(a wins | a shown first), p2 = 1 - P(b shown first
  wins) = P(a wins | a shown second). Each order gives a raw verdict (p > 0.5: a; p < 0.5: b;
  exactly 0.5: none). When the two raw verdicts disagree the pair is a tie (confidence 0.5);
  otherwise the winner's confidence is the mean of the two probabilities. A judge that always
  answers "A" therefore produces only ties: its position preference cancels.
- ``p_a`` = (p1 + p2) / 2 is the order-balanced probability that a wins, the soft signal used
  as a reward and for win rates.
- With a constitution's ``per_principle``, every principle is asked separately (both orders) and
  the probabilities are combined by weight before the verdict.
- ``judge_stats``: position bias = share of first-position wins among the raw single-order
  verdicts minus 0.5 (0: none; +0.5: always the first); length bias = share of decided verdicts
  that prefer the longer response (0.5: none); with human labels, agreement and Cohen's kappa.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .constitution import Constitution, Principle, load_constitution


class JudgeError(RuntimeError):
    """A judge that cannot answer (unreachable endpoint, bad model); the message says which and why."""


@dataclass(frozen=True)
class JudgeItem:
    prompt: object  # a string or a chat message list
    first: object   # shown as Response A
    second: object  # shown as Response B
    principles: tuple[Principle, ...]


class Judge(Protocol):
    name: str
    constitution: Constitution

    def prob_first(self, items: list[JudgeItem]) -> list[float]:
        """P(the first-shown response is better), one per item, each in [0, 1]."""


@dataclass
class Verdict:
    winner: str        # "a", "b" or "tie"
    confidence: float  # P(winner is better), 0.5 for ties
    p_a: float         # order-balanced P(a is better)
    p_first: float     # P(a wins) with a shown first
    p_second: float    # P(a wins) with a shown second
    raw: tuple         # single-order verdicts: ("a"|"b"|None, "a"|"b"|None)


def _raw(p: float) -> str | None:
    return "a" if p > 0.5 else "b" if p < 0.5 else None


def verdict(p_first: float, p_second: float) -> Verdict:
    """Combine the two orders (see the module docstring)."""
    r1, r2 = _raw(p_first), _raw(p_second)
    p_a = (p_first + p_second) / 2
    if r1 is None or r1 != r2:
        return Verdict("tie", 0.5, p_a, p_first, p_second, (r1, r2))
    return Verdict(r1, p_a if r1 == "a" else 1 - p_a, p_a, p_first, p_second, (r1, r2))


def compare(judge: Judge, prompts: Sequence, a: Sequence, b: Sequence) -> list[Verdict]:
    """Judge every pair (prompt, a, b) in both orders; returns one ``Verdict`` per pair."""
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"compare: {len(prompts)} prompts, {len(a)} a responses, {len(b)} b responses")
    n = len(prompts)
    if n == 0:
        return []
    con = judge.constitution
    groups = [(p,) for p in con.principles] if con.per_principle else [con.principles]
    weights = [g[0].weight for g in groups] if con.per_principle else [1.0]
    p1, p2 = [0.0] * n, [0.0] * n
    for group, w in zip(groups, weights):
        items = ([JudgeItem(p, x, y, group) for p, x, y in zip(prompts, a, b)]
                 + [JudgeItem(p, y, x, group) for p, x, y in zip(prompts, a, b)])
        probs = list(judge.prob_first(items))
        if len(probs) != 2 * n:
            raise JudgeError(f"judge {judge.name}: returned {len(probs)} probabilities for {2 * n} items")
        for i in range(n):
            p1[i] += w * float(probs[i])
            p2[i] += w * (1.0 - float(probs[n + i]))
    total = sum(weights)
    return [verdict(x / total, y / total) for x, y in zip(p1, p2)]


def judge_winrate(judge: Judge, prompts: Sequence, a: Sequence, b: Sequence) -> dict:
    """Win rate of ``a`` over ``b``: {win_rate (ties count half), mean_p_a, wins, losses, ties, n}."""
    vs = compare(judge, prompts, a, b)
    wins, losses = sum(v.winner == "a" for v in vs), sum(v.winner == "b" for v in vs)
    n = len(vs)
    return {"win_rate": (wins + 0.5 * (n - wins - losses)) / n if n else None,
            "mean_p_a": sum(v.p_a for v in vs) / n if n else None,
            "wins": wins, "losses": losses, "ties": n - wins - losses, "n": n}


def _length(x) -> int:
    from .constitution import response_text

    return len(response_text(x))


def judge_stats(verdicts: Sequence[Verdict], a: Sequence, b: Sequence,
                human: Sequence[str | None] | None = None) -> dict:
    """Position bias, length bias, tie count and (where labelled) agreement with human labels.

    ``human[i]`` is "a", "b", "tie" or None (unlabelled).
    """
    from ..stats import cohen_kappa

    first_wins, decided = 0, 0
    for v in verdicts:
        r1, r2 = v.raw
        if r1 is not None:  # order 1: a shown first
            decided += 1
            first_wins += r1 == "a"
        if r2 is not None:  # order 2: b shown first
            decided += 1
            first_wins += r2 == "b"
    longer, by_length = 0, 0
    for v, x, y in zip(verdicts, a, b):
        lx, ly = _length(x), _length(y)
        if v.winner != "tie" and lx != ly:
            by_length += 1
            longer += (v.winner == "a") == (lx > ly)
    n = len(verdicts)
    out = {"pairs": n, "ties": sum(v.winner == "tie" for v in verdicts),
           "first_position_win_rate": first_wins / decided if decided else None,
           "position_bias": first_wins / decided - 0.5 if decided else None,
           "raw_verdicts": decided,
           "longer_win_rate": longer / by_length if by_length else None, "length_pairs": by_length}
    if human is not None:
        labelled = [(v.winner, h) for v, h in zip(verdicts, human) if h is not None]
        out["human_labelled"] = len(labelled)
        if labelled:
            out["human_agreement"] = sum(j == h for j, h in labelled) / len(labelled)
            out["human_kappa"] = cohen_kappa([j for j, _ in labelled], [h for _, h in labelled])
    return out


def with_constitution(constitution: Constitution | str | None) -> Constitution:
    if isinstance(constitution, Constitution):
        return constitution
    return load_constitution(constitution or None)
