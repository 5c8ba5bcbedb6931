"""Judges that run in this process: a causal LM read at the answer token, and a reward model.

``LMJudge``: the judge prompt (rendered with the model's chat template when it has one, else as
plain text ending in "Answer:") is run once; P(A) = softmax(logit_A, logit_B)[0] at the next
token, where logit_A / logit_B are those of the first token of "A" / "B" after a chat template's
generation prompt, of " A" / " B" after "Answer:" (byte-level BPE spells a letter after a space
as its own token); tokenizers that split
a letter into several tokens are read at the first one; a tokenizer that maps both letters to
the same first token, or to the unknown token, is refused with a clear error.

``RewardModelJudge``: P(first better) = sigmoid(r(prompt, first) - r(prompt, second)), the
Bradley-Terry probability under the reward model; the constitution does not reach it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .base import JudgeError, JudgeItem
from .constitution import Constitution, render


class LMJudge:
    def __init__(self, path: str, constitution: Constitution, device: torch.device | str = "cpu",
                 batch_size: int = 8, max_length: int = 1024, trust_remote_code: bool = False,
                 answers: tuple[str, str] | None = None):
        from ..models import load_causal_lm, load_tokenizer

        self.name = Path(path).name
        self.constitution = constitution
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_causal_lm(path, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        answers = answers or (("A", "B") if self.chat else (" A", " B"))
        self.answer_ids = answer_token_ids(self.tokenizer, answers, path)

    def _ids(self, item: JudgeItem) -> list[int]:
        from ..data.tokenize import prompt_ids

        text = render(item.prompt, item.first, item.second, item.principles)
        if self.chat:
            ids = prompt_ids(self.tokenizer, [{"role": "user", "content": text}])
        else:
            ids = prompt_ids(self.tokenizer, text + "\nAnswer:")
        return ids[-self.max_length:]  # keep the end: the question and the answer position

    @torch.no_grad()
    def prob_first(self, items: list[JudgeItem]) -> list[float]:
        from ..logprobs import causal_lm_logits
        from ..models import last_token_index

        out: list[float] = []
        pad = self.tokenizer.pad_token_id
        a, b = self.answer_ids
        for start in range(0, len(items), self.batch_size):
            rows = [self._ids(it) for it in items[start:start + self.batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            logits_BTV = causal_lm_logits(self.model, ids, mask)
            last_BV = logits_BTV[torch.arange(len(rows), device=self.device), last_token_index(mask)].float()
            out += torch.softmax(last_BV[:, [a, b]], dim=-1)[:, 0].tolist()  # (B,) P(A)
        return out


def answer_token_ids(tokenizer, answers: tuple[str, str], where: str) -> tuple[int, int]:
    """The first token id of each answer letter; refuses identical or unknown ids."""
    ids = []
    for letter in answers:
        enc = tokenizer.encode(letter, add_special_tokens=False)
        if not enc or enc[0] == tokenizer.unk_token_id:
            raise JudgeError(f"{where}: the tokenizer has no token for the answer {letter.strip()!r}; "
                             "a local judge model must be able to write 'A' and 'B'")
        ids.append(enc[0])
    if ids[0] == ids[1]:
        raise JudgeError(f"{where}: the answers {answers[0]!r} and {answers[1]!r} start with the same token "
                         f"(id {ids[0]}); their probabilities cannot be told apart")
    return ids[0], ids[1]


class RewardModelJudge:
    def __init__(self, path: str, constitution: Constitution, device: torch.device | str = "cpu",
                 batch_size: int = 32, trust_remote_code: bool = False):
        from ..reward_model import RewardModelSource

        self.name = Path(path).name
        self.constitution = Constitution(constitution.principles, constitution.name, per_principle=False)
        self.source = RewardModelSource(path, torch.device(device), batch_size, trust_remote_code)

    def prob_first(self, items: list[JudgeItem]) -> list[float]:
        from .constitution import response_text

        prompts = [it.prompt for it in items]
        first = self.source(prompts, [response_text(it.first) for it in items])
        second = self.source(prompts, [response_text(it.second) for it in items])
        return [1 / (1 + math.exp(-d)) for d in (first - second).tolist()]
