"""Simulated annotators: noisy Bradley-Terry choices on the gold score.

An annotator prefers response a over b with probability

    p = sigmoid((gold(a) - gold(b) + length_bias * (words(a) - words(b))) / temperature)

(Bradley & Terry 1952; the model a reward model is trained to invert), and then flips its choice
with probability ``flip_rate``, so P(a) = (1 - flip) * p + flip * (1 - p). Temperature sets how
often close calls go the "wrong" way, flip_rate models careless clicks, and length_bias > 0 is an
annotator who likes longer answers (the bias reward models pick up; Singhal et al. 2023).
``temperature`` 0 is a deterministic annotator (ties: a coin flip).

``ceiling_accuracy`` is the best accuracy any predictor can reach against such labels: knowing
p exactly, it predicts the likelier side and is right with probability max(p, 1 - p).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .gold import gold_score
from .tasks import STYLES, Prompt, make_prompts, respond


def _sigmoid(x: float) -> float:
    # Split by sign so exp never overflows for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _prompt_of(row: dict) -> Prompt:
    return Prompt(row["prompt"], row["category"], row.get("subject") or "", row.get("answer") or "")


@dataclass
class SimulatedAnnotator:
    temperature: float = 0.5
    flip_rate: float = 0.0
    length_bias: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.temperature < 0 or not 0.0 <= self.flip_rate <= 1.0:
            raise ValueError(f"need temperature >= 0 and 0 <= flip_rate <= 1; got {self.temperature}, {self.flip_rate}")
        self._rng = random.Random(self.seed)

    def prob_a(self, prompt: Prompt, a: str, b: str) -> float:
        """Probability that this annotator labels ``a`` the better response."""
        margin = gold_score(prompt, a) - gold_score(prompt, b)
        margin += self.length_bias * (len(a.split()) - len(b.split()))
        if self.temperature == 0:
            p = 0.5 if margin == 0 else float(margin > 0)
        else:
            p = _sigmoid(margin / self.temperature)
        return (1.0 - self.flip_rate) * p + self.flip_rate * (1.0 - p)

    def label(self, prompt: Prompt, a: str, b: str) -> str:
        """"a" or "b", drawn from this annotator's own RNG (reproducible from ``seed``)."""
        return "a" if self._rng.random() < self.prob_a(prompt, a, b) else "b"

    def label_pairs(self, rows: list[dict]) -> tuple[list[dict], int]:
        """Label ``{prompt, response_a, response_b, category, subject, answer}`` rows.

        Returns (TRL preference records ``{prompt, chosen, rejected, category, subject, answer,
        source}``, number of rows skipped because both responses were identical). Every other row
        gets a choice: an annotator never answers "tie".
        """
        records, skipped = [], 0
        for row in rows:
            a, b = row["response_a"], row["response_b"]
            if a == b:
                skipped += 1
                continue
            prompt = _prompt_of(row)
            chosen, rejected = (a, b) if self.label(prompt, a, b) == "a" else (b, a)
            records.append({"prompt": prompt.text, "chosen": chosen, "rejected": rejected,
                            "category": prompt.category, "subject": prompt.subject, "answer": prompt.answer,
                            "source": "simulated"})
        return records, skipped

    def ceiling_accuracy(self, pairs: list[dict]) -> float:
        """Mean of max(p, 1 - p) over pairs (rows with response_a/b or records with chosen/rejected;
        identical responses skipped): the expected accuracy, against this annotator's labels, of a
        predictor that knows p. A reward model's held-out accuracy cannot exceed it on average."""
        ps = []
        for row in pairs:
            a, b = (row["response_a"], row["response_b"]) if "response_a" in row else (row["chosen"], row["rejected"])
            if a != b:
                p = self.prob_a(_prompt_of(row), a, b)
                ps.append(max(p, 1.0 - p))
        if not ps:
            raise ValueError("ceiling_accuracy needs at least one pair with two different responses")
        return sum(ps) / len(ps)


def pair_rows(seed: int, n: int, split: str | None = "train") -> list[dict]:
    """``n`` unlabelled rows: a prompt and two responses in two different styles drawn uniformly."""
    rng = random.Random(seed)
    prompts = make_prompts(seed, math.ceil(n / len(STYLES)), split=split)
    rows = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        style_a, style_b = rng.sample(STYLES[p.category], 2)
        rows.append({**p.record(), "response_a": respond(p, style_a, rng), "response_b": respond(p, style_b, rng)})
    return rows
