"""A judge behind any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server, hosted APIs).

Through the official ``openai`` client with its own retries disabled (``max_retries=0``) and ours
in their place: exponential backoff with full jitter (delay = uniform(0, base * 2^attempt)) on
timeouts, connection errors, 429 and 5xx; other errors (bad request, authentication, unknown
model) stop at once with the endpoint named. Requests run on a thread pool of ``concurrency``
workers. Every verdict is cached on disk (JSONL, keyed by a SHA-256 of the model, the messages and
the sampling parameters), so a rerun, or a resumed run, makes no calls for pairs already judged;
without a cache file verdicts are still remembered in memory for the life of the judge (a reward
source sees the same completion many times).

The judge asks for a single letter (temperature 0, ``max_tokens`` small). With ``logprobs`` the
first token's top log-probabilities give P(A) = softmax(lp_A, lp_B)[0]; without (or when the
server sends none) the parsed letter counts as probability 1.0 (0.0 for B), and a reply that
names neither letter as 0.5 (counted in ``unparsed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .base import JudgeError, JudgeItem
from .constitution import Constitution, render

log = logging.getLogger(__name__)

_PATTERNS = [re.compile(p) for p in (
    r"^\W*([AB])\W*$",                                    # the whole reply is the letter: "A", " B.", "[[A]]"
    r"\[\[([AB])\]\]",                                    # MT-Bench's "[[A]]" anywhere
    r"^\W*([AB])[).:,\]]",                                 # "(A) because ...", "B: ..."
    r"(?i:response|assistant|option)\s+([AB])\s+(?i:is|was)\s+(?i:the\s+)?(?i:better|preferred)",
    r"(?i:answer|verdict|better|choice|prefer\w*)[^AB\n]{0,20}?\b([AB])\b",  # "The better response is B"
)]


def parse_verdict(text: str) -> str | None:
    """"A", "B" or None from a judge's reply (see ``_PATTERNS``; else a lone standalone letter)."""
    text = (text or "").strip()
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1)
    letters = set(re.findall(r"\b([AB])\b", text))
    return letters.pop() if len(letters) == 1 else None


def prob_from_top_logprobs(top: list[tuple[str, float]]) -> float | None:
    """P(A) from (token, logprob) alternatives of the first answer token; None if neither letter is there."""
    best: dict[str, float] = {}
    for token, lp in top:
        letter = token.strip()
        if letter in ("A", "B") and lp > best.get(letter, -math.inf):
            best[letter] = lp
    if not best:
        return None
    la, lb = best.get("A", -math.inf), best.get("B", -math.inf)
    m = max(la, lb)
    ea, eb = math.exp(la - m) if la > -math.inf else 0.0, math.exp(lb - m) if lb > -math.inf else 0.0
    return ea / (ea + eb)


class VerdictCache:
    """An append-only JSONL file of {key, p, text}; thread-safe."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.lock = threading.Lock()
        if self.path and self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable cache line skipped", self.path, n)

    @staticmethod
    def key(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        entry = {"key": key, **entry}
        with self.lock:
            self.entries[key] = entry
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")


class OpenAIJudge:
    def __init__(self, base_url: str, constitution: Constitution, model: str = "", api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, concurrency: int = 8,
                 cache: str | Path | None = None, logprobs: bool = False, max_tokens: int = 4):
        from ..extras import require_extra

        require_extra("judge", "openai")  # the one-line hint, not a traceback, without rlhfkit[judge]
        import openai

        self.base_url, self.constitution = base_url, constitution
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    timeout=timeout, max_retries=0)
        self.max_retries, self.backoff, self.concurrency = max_retries, backoff, max(1, concurrency)
        self.logprobs, self.max_tokens = logprobs, max_tokens
        self.cache = VerdictCache(cache)
        self.calls = self.cached = self.unparsed = self.retries = 0
        self._count = threading.Lock()
        self.model = model or self._served_model()
        self.name = self.model

    def _retrying(self, fn, what: str):
        import openai

        retryable = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                     openai.InternalServerError)
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except retryable as e:
                if attempt == self.max_retries:
                    raise JudgeError(f"judge endpoint {self.base_url}: {what} failed after {attempt + 1} tries: "
                                     f"{type(e).__name__}: {e}") from None
                with self._count:
                    self.retries += 1
                time.sleep(random.uniform(0, self.backoff * 2 ** attempt))
            except openai.APIError as e:
                raise JudgeError(f"judge endpoint {self.base_url}: {what}: {type(e).__name__}: {e}") from None

    def _served_model(self) -> str:
        models = self._retrying(lambda: self.client.models.list().data, "listing models")
        if not models:
            raise JudgeError(f"judge endpoint {self.base_url} serves no model; set judge_model")
        return models[0].id

    def _params(self) -> dict:
        params = {"temperature": 0.0, "max_tokens": self.max_tokens}
        if self.logprobs:
            params.update(logprobs=True, top_logprobs=5)
        return params

    def _one(self, item: JudgeItem) -> float:
        messages = [{"role": "user", "content": render(item.prompt, item.first, item.second, item.principles)}]
        params = self._params()
        key = VerdictCache.key({"model": self.model, "messages": messages, **params})
        hit = self.cache.get(key)
        if hit is not None:
            with self._count:
                self.cached += 1
            return float(hit["p"])
        reply = self._retrying(lambda: self.client.chat.completions.create(
            model=self.model, messages=messages, **params), "chat completion")
        choice = reply.choices[0]
        text = choice.message.content or ""
        p = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if self.logprobs and content:
            p = prob_from_top_logprobs([(t.token, t.logprob) for t in (content[0].top_logprobs or [])])
        if p is None:
            letter = parse_verdict(text)
            p = {"A": 1.0, "B": 0.0}.get(letter, 0.5)
            if letter is None:
                with self._count:
                    self.unparsed += 1
                log.warning("judge %s: no verdict in reply %r (counted as 0.5)", self.model, text[:80])
        with self._count:
            self.calls += 1
        self.cache.put(key, {"p": p, "text": text})
        return p

    def prob_first(self, items: list[JudgeItem]) -> list[float]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, items))

    def counters(self) -> dict:
        return {"calls": self.calls, "cached": self.cached, "unparsed": self.unparsed, "retries": self.retries}
