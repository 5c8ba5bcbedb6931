"""Input and output filters for ``rlhfkit serve``: blocklists and a classifier, every decision logged.

Guard file (YAML)::

    refusal: "Sorry, I can't help with that."     # what a blocked request gets back
    log: guard.jsonl                               # optional: one JSON line per decision (relative: to this file)
    input:                                         # checks the request's messages / prompt
      blocklist:
        - bomb                                     # a word or phrase: whole words + inflections, any case
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

Blocklists match normalised text (``normalize``): NFKC (full-width letters, ligatures), format
characters (zero-width spaces and joiners, soft hyphens, BOM) and combining marks removed,
Cyrillic/Greek look-alikes folded to Latin, case folded, ``_`` and letter/digit boundaries split;
camelCase is split in a second variant, and runs of single letters ("b o m b", "b.o.m.b") are
joined. A word matches as a whole token or with an inflection (s, es, ed, er, ers, ing, ings, a
doubled final consonant allowed): "bombs", "bomber", "bomb_maker", "makeBomb" match; "bombastic",
"abomb" do not. A conversation is checked per message, and joined (with newlines, and with
nothing, so a word split across two messages is whole again). Regular expressions see the raw and
the normalised text. A classifier scores the whole text in overlapping windows of at most 512
tokens and takes the maximum. What a blocklist cannot catch (paraphrase, encodings such as base64,
other languages, words split inside longer ones) is the classifier's job: docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError
from .config_yaml import load_yaml_file

log = logging.getLogger("rlhfkit.guard")
FLAGGED_NAMES = ("unsafe", "flagged", "toxic", "harmful")
DEFAULT_REFUSAL = "Sorry, I can't help with that."
WINDOW = 512  # classifier tokens per window (fewer when the model's positions are fewer)
# Cyrillic and Greek letters that look like Latin ones (a subset of Unicode's confusables.txt).
CONFUSABLES = str.maketrans(
    "аеорсухіјѕһԁԛԝвкмнтьАВЕКМНОРСТХІЈЅУԜ"
    "αβεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijshdqwbkmhtbABEKMHOPCTXIJSYW"
    "abeikvoptuxABEZHIKMNOPTYX")
INVISIBLE = str.maketrans("", "", "\u115f\u1160\u3164\uffa0\u2800")  # fillers outside category Cf
SINGLE_LETTER_RUN = re.compile(r"(?<!\w)\w(?:\W{1,3}\w(?!\w)){2,}")  # b o m b, b.o.m.b, b-o-m-b


def normalize(text: str, split_camel: bool = False) -> str:
    """Text as the blocklist sees it (see the module docstring); ``split_camel``: "makeBomb" -> "make bomb"."""
    text = unicodedata.normalize("NFKD", text.translate(INVISIBLE))
    # Cf: zero-width space/joiners, soft hyphen, BOM, bidi and tag characters; Mn: combining marks
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Mn")).translate(CONFUSABLES)
    if split_camel:
        text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    text = unicodedata.normalize("NFC", text).casefold().replace("_", " ")
    return re.sub(r"(?<=[^\W\d])(?=\d)|(?<=\d)(?=[^\W\d])", " ", text)


def _views(text: str) -> tuple[list[str], list[str]]:
    """(normalised variants of ``text``, its single-letter runs joined): what the word patterns see."""
    plain = normalize(text)
    runs = [re.sub(r"\W", "", m.group()) for m in SINGLE_LETTER_RUN.finditer(plain)]
    joined = SINGLE_LETTER_RUN.sub(lambda m: re.sub(r"\W", "", m.group()), plain) if runs else plain
    return list(dict.fromkeys([plain, normalize(text, split_camel=True), joined])), runs


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [start, end) of at most ``size`` covering 0..n, consecutive ones sharing ``overlap``
    tokens, so any run of up to overlap + 1 tokens lies whole inside one span."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, size {size})")
    spans, start = [], 0
    while True:
        spans.append((start, min(start + size, n)))
        if start + size >= n:
            return spans
        start += size - overlap


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

    def _specials(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a text (e.g. [CLS] / [SEP], or BOS)."""
        bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("x")["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if full[i:i + len(bare)] == bare:
                return full[:i], full[i + len(bare):]
        return [], []

    def score(self, text: str, batch_size: int = 8) -> float:
        """P(flagged): the maximum over overlapping windows of the whole text (a window's verdict
        cannot see past its edge, so a quarter of each window is shared with the next)."""
        torch = self.torch
        positions = getattr(self.model.config, "max_position_embeddings", None) or WINDOW
        head, tail = self._specials()
        size = min(WINDOW, positions, self.tokenizer.model_max_length) - len(head) - len(tail)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows = [head + ids[a:b] + tail for a, b in windows(len(ids), size, size // 4)]
        best = 0.0
        for i in range(0, len(rows), batch_size):
            enc = self.tokenizer.pad({"input_ids": rows[i:i + batch_size]}, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc).logits.float()          # (B, labels)
            p = torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else torch.softmax(logits, -1)[:, self.index]
            best = max(best, float(p.max()))
        return best


@dataclass
class Filter:
    # (as written, compiled, the word without spaces; "" for a regex)
    patterns: list[tuple[str, re.Pattern, str]] = field(default_factory=list)
    classifier: Classifier | None = None

    def _blocklisted(self, text: str) -> str | None:
        views, runs = _views(text)
        for shown, pattern, compact in self.patterns:
            if not compact and pattern.search(text):  # a regex also sees the raw text
                return shown
            if any(pattern.search(v) for v in views) or compact and any(compact in run for run in runs):
                return shown
        return None

    def check(self, text: str | list[str]) -> Decision:
        """``text``: one text, or the parts of a conversation (checked one by one and joined)."""
        parts = [text] if isinstance(text, str) else list(text)
        whole = "\n".join(parts)
        for candidate in parts + (["".join(parts), whole] if len(parts) > 1 else []):
            shown = self._blocklisted(candidate)
            if shown is not None:
                return Decision(True, f"blocklist: {shown}")
        if self.classifier is not None:
            p = self.classifier.score(whole)
            if p > self.classifier.threshold:
                return Decision(True, f"classifier: {p:.3f} > {self.classifier.threshold}", p)
            return Decision(False, "", p)
        return Decision(False)


def word_pattern(word: str) -> re.Pattern:
    """A word or phrase as a case-insensitive pattern of whole words, the last one inflected or not
    (s, es, ed, er, ers, ing, ings; "stab" -> "stabbing"); whitespace inside matches any run."""
    parts = [re.escape(p) for p in normalize(word).split()]
    last = parts[-1][-1] if parts and parts[-1][-1:].isalpha() else ""
    suffix = rf"(?:e?s|{re.escape(last)}?(?:ed|d|er|ers|ing|ings))?" if last else ""
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + suffix + r"(?!\w)", re.IGNORECASE)


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
            patterns.append((item, word_pattern(item), normalize(item).replace(" ", "")))
        elif isinstance(item, dict) and set(item) == {"regex"} and isinstance(item["regex"], str) and item["regex"]:
            try:
                patterns.append((f"/{item['regex']}/", re.compile(item["regex"], re.IGNORECASE), ""))
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

    def check(self, stage: str, text: str | list[str], request_id: str = "") -> Decision:
        """Check ``text`` (or a conversation's texts) with the ``stage`` ("input" / "output") filter;
        the decision is logged."""
        decision = (self.input if stage == "input" else self.output).check(text)
        shown = text if isinstance(text, str) else "\n".join(text)
        entry = {"time": round(time.time(), 3), "stage": stage, "blocked": decision.blocked,
                 "reason": decision.reason, "score": decision.score, "request_id": request_id, "text": shown[:200]}
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
