"""Input and output filters for ``rlhfkit serve``: blocklists and a classifier, every decision logged.

Guard file (YAML)::

    refusal: "Sorry, I can't help with that."     # what a blocked request gets back
    log: guard.jsonl                               # optional: one JSON line per decision (relative: to this file)
    input:                                         # checks the request's messages / prompt
      blocklist:
        - bomb                                     # a word or phrase: whole words, any case
        - regex: 'pass(word|phrase)s?'             # a regular expression (case-insensitive)
      classifier:                                  # optional
        model: path/to/classifier                  # AutoModelForSequenceClassification folder
        threshold: 0.5                             # block when P(flagged) > threshold
        label: unsafe                              # optional: the flagged label's name or index
    output:                                        # checks the generated text; same fields
      blocklist: [...]

The flagged probability is softmax(logits)[k], where k is ``label`` when given (a name from the
model's ``id2label`` or an index), else the label named unsafe / flagged / toxic / harmful if the
model has one, else index 1; a one-logit model gives sigmoid(logit). Decisions go to the
``rlhfkit.guard`` logger and, with ``log``, to a JSONL file (time, stage, verdict, reason, score,
request id and the first 200 characters of the checked text). Errors in the file name the file
and the field.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, load_yaml_file

log = logging.getLogger("rlhfkit.guard")
FLAGGED_NAMES = ("unsafe", "flagged", "toxic", "harmful")
DEFAULT_REFUSAL = "Sorry, I can't help with that."


@dataclass
class Decision:
    blocked: bool
    reason: str = ""
    score: float | None = None


class Classifier:
    """A sequence-classification model's probability of the flagged label."""

    def __init__(self, path: str, threshold: float, label=None, where: str = "classifier"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{where}: field 'model': no model folder (config.json) at {path!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
        if self.model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.threshold, self.torch = threshold, torch
        self.index = self._label_index(label, where)

    def _label_index(self, label, where: str) -> int:
        id2label = {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}
        n = self.model.config.num_labels
        if label is not None:
            if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < max(n, 1):
                return label
            for i, name in id2label.items():
                if name.lower() == str(label).lower():
                    return i
            raise ConfigError(f"{where}: field 'label': {label!r} is not one of the model's labels {id2label}")
        for i, name in id2label.items():
            if name.lower() in FLAGGED_NAMES:
                return i
        return 0 if n == 1 else 1

    def score(self, text: str) -> float:
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
        with self.torch.no_grad():
            logits = self.model(**enc).logits[0].float()
        if logits.numel() == 1:
            return float(self.torch.sigmoid(logits[0]))
        return float(self.torch.softmax(logits, -1)[self.index])


@dataclass
class Filter:
    patterns: list[tuple[str, re.Pattern]] = field(default_factory=list)  # (as written, compiled)
    classifier: Classifier | None = None

    def check(self, text: str) -> Decision:
        for shown, pattern in self.patterns:
            if pattern.search(text):
                return Decision(True, f"blocklist: {shown}")
        if self.classifier is not None:
            p = self.classifier.score(text)
            if p > self.classifier.threshold:
                return Decision(True, f"classifier: {p:.3f} > {self.classifier.threshold}", p)
            return Decision(False, "", p)
        return Decision(False)


def word_pattern(word: str) -> re.Pattern:
    """A word or phrase as a whole-word, case-insensitive pattern (whitespace inside matches any run)."""
    parts = [re.escape(p) for p in word.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)


def _filter(raw, where: str) -> Filter:
    if raw is None:
        return Filter()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'blocklist' and/or 'classifier'")
    unknown = set(raw) - {"blocklist", "classifier"}
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r} (expected blocklist, classifier)")
    patterns = []
    items = raw.get("blocklist") or []
    if not isinstance(items, list):
        raise ConfigError(f"{where}.blocklist: expected a list of words or {{regex: PATTERN}} entries")
    for i, item in enumerate(items):
        at = f"{where}.blocklist[{i}]"
        if isinstance(item, str) and item.strip():
            patterns.append((item, word_pattern(item)))
        elif isinstance(item, dict) and set(item) == {"regex"} and isinstance(item["regex"], str) and item["regex"]:
            try:
                patterns.append((f"/{item['regex']}/", re.compile(item["regex"], re.IGNORECASE)))
            except re.error as e:
                raise ConfigError(f"{at}: field 'regex': invalid regular expression {item['regex']!r}: {e}") from None
        else:
            raise ConfigError(f"{at}: expected a non-empty word or {{regex: PATTERN}}, got {item!r}")
    classifier = None
    spec = raw.get("classifier")
    if spec is not None:
        at = f"{where}.classifier"
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
            raise ConfigError(f"{at}: expected {{model: FOLDER, threshold: NUMBER, label?: NAME}}")
        extra = set(spec) - {"model", "threshold", "label"}
        if extra:
            raise ConfigError(f"{at}: unknown field {sorted(extra)[0]!r} (expected model, threshold, label)")
        threshold = spec.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ConfigError(f"{at}: field 'threshold': expected a number in [0, 1], got {threshold!r}")
        classifier = Classifier(spec["model"], float(threshold), spec.get("label"), at)
    return Filter(patterns, classifier)


class Guard:
    def __init__(self, input: Filter | None = None, output: Filter | None = None,
                 refusal: str = DEFAULT_REFUSAL, log_path: str | Path | None = None):
        self.input, self.output = input or Filter(), output or Filter()
        self.refusal, self.log_path = refusal, Path(log_path) if log_path else None
        self._lock = threading.Lock()

    def check(self, stage: str, text: str, request_id: str = "") -> Decision:
        """Check ``text`` with the ``stage`` ("input" / "output") filter; the decision is logged."""
        decision = (self.input if stage == "input" else self.output).check(text)
        entry = {"time": round(time.time(), 3), "stage": stage, "blocked": decision.blocked,
                 "reason": decision.reason, "score": decision.score, "request_id": request_id, "text": text[:200]}
        log.info("guard %s %s%s (request %s)", stage, "BLOCKED" if decision.blocked else "allowed",
                 f": {decision.reason}" if decision.reason else "", request_id)
        if self.log_path is not None:
            with self._lock, self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return decision


def load_guard(path: str | Path) -> Guard:
    """The guard file at ``path``, validated; errors name the file and field."""
    raw = load_yaml_file(path, "guard file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'input', 'output', 'refusal'")
    unknown = set(raw) - {"input", "output", "refusal", "log"}
    if unknown:
        raise ConfigError(f"{path}: unknown field {sorted(unknown)[0]!r} (expected input, output, refusal, log)")
    refusal = raw.get("refusal", DEFAULT_REFUSAL)
    if not isinstance(refusal, str) or not refusal.strip():
        raise ConfigError(f"{path}: field 'refusal': expected a non-empty string")
    log_path = raw.get("log")
    if log_path is not None and not isinstance(log_path, str):
        raise ConfigError(f"{path}: field 'log': expected a file path")
    if log_path and not Path(log_path).is_absolute():
        log_path = str(Path(path).parent / log_path)
    return Guard(_filter(raw.get("input"), f"{path}: input"), _filter(raw.get("output"), f"{path}: output"),
                 refusal, log_path)
