"""``rlhfkit judge``: label pairs with an AI judge and write TRL preference rows.

Reads pairs ``{prompt, response_a, response_b}`` (or ``{prompt, chosen, rejected}``, judged as
a = chosen with "a" as the human label), judges each in both orders, and writes one row per
decided pair: ``{prompt, chosen, rejected, confidence, source: "judge:NAME", p_orders, id?, ...}``
(other input columns are carried along). Ties (the two orders disagree) are dropped and counted,
or kept as pair rows with ``tie: true``. ``OUTPUT.summary.json`` holds the statistics: ties,
position bias, length bias, agreement with human labels (``label`` / ``gold`` fields, or the
chosen side of chosen/rejected input) and the endpoint's call / cache / retry counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config import ConfigError, option, require
from ..data import DataError, read_records
from ..data.load import json_type
from . import is_url, make_judge
from .base import compare, judge_stats
from .constitution import load_constitution


@dataclass
class JudgeConfig:
    """Label pairs with an AI judge (RLAIF): both orders, bias statistics, TRL preference rows out."""

    stage: ClassVar[str] = "judge"

    data: str = option("", "Pairs {prompt, response_a, response_b} (what `sample-pairs` writes), or {prompt, chosen, rejected} "
                           "rows (judged as a=chosen; agreement with that human label is reported); an optional `label` "
                           "or `gold` field (a, b or tie) is a human label (required).")
    judge: str = option("", "The judge: an OpenAI-compatible `http(s)://HOST/v1` URL, a reward-model folder, or a causal-LM folder (required).")
    judge_model: str = option("", "Model name the endpoint serves; empty means the first one it lists.")
    constitution: str = option("", "YAML file of principles; empty means the shipped default (helpful, honest, harmless).")
    output: str = option("", "Preference JSONL to write ({prompt, chosen, rejected, confidence, source, ...}); "
                             "the run's statistics go beside it as OUTPUT.summary.json (required).")
    output_dir: str = option("", "Folder form (what `rlhfkit pipeline` sets): with `output` empty, rows go to OUTPUT_DIR/prefs.jsonl.")
    ties: str = option("drop", "Pairs whose two orders disagree: drop them (counted), or keep them in the output as "
                               "{prompt, response_a, response_b, tie: true, confidence: 0.5} rows.", choices=["drop", "keep"])
    name: str = option("", "Source name written as `source: judge:NAME`; empty means the judge model's name.")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the endpoint's API key (\"EMPTY\" when unset).")
    timeout: float = option(60.0, "Seconds per endpoint request before it counts as failed (and is retried).")
    max_retries: int = option(4, "Retries per request on timeouts, connection errors, 429 and 5xx (exponential backoff with jitter).")
    concurrency: int = option(8, "Endpoint requests in flight at once.")
    cache: str = option("", "Verdict cache (JSONL) for endpoint judges; empty means OUTPUT.cache.jsonl; `none` disables it.")
    logprobs: bool = option(False, "Ask the endpoint for log-probs of the answer token (graded confidence); off: the letter counts as 1.0.")
    batch_size: int = option(8, "Pairs per forward pass for local judges.")
    device: str = option("auto", "auto, cpu, cuda (local judges).")
    trust_remote_code: bool = option(False, "Allow model code from the judge's folder to run.")

    def check(self) -> None:
        if not self.output and self.output_dir:
            self.output = str(Path(self.output_dir) / "prefs.jsonl")
        require(self, "data", "judge", "output")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.batch_size < 1:
            raise ConfigError("config: need concurrency >= 1, max_retries >= 0, timeout > 0, batch_size >= 1")


LABELS = ("a", "b", "tie")


def _field(rec: dict, key: str, where):
    value = rec.get(key)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    if not isinstance(value, str) or not value.strip():
        raise DataError.at(where, "missing" if value is None else f"expected a non-empty string or message list, "
                                                                    f"got {json_type(value)}", key)
    return value


def load_pairs(source: str) -> list[dict]:
    """Pairs with a human label where present: [{prompt, a, b, human, extra}]; errors name file, line, field."""
    out = []
    for where, rec in read_records(source):
        if not isinstance(rec, dict):
            raise DataError.at(where, f"expected an object, got {json_type(rec)}")
        if "response_a" in rec or "response_b" in rec:
            a, b, keys = _field(rec, "response_a", where), _field(rec, "response_b", where), ("response_a", "response_b")
            human = rec.get("label", rec.get("gold"))
            label_key = "label" if "label" in rec else "gold"
        elif "chosen" in rec and "rejected" in rec:
            a, b, keys, human, label_key = _field(rec, "chosen", where), _field(rec, "rejected", where), \
                ("chosen", "rejected"), "a", None
        else:
            raise DataError.at(where, "expected {prompt, response_a, response_b} (or {prompt, chosen, rejected})")
        prompt = _field(rec, "prompt", where)
        if human is not None and human not in LABELS:
            raise DataError.at(where, f"expected one of a, b, tie, got {human!r}"[:120], label_key)
        if a == b:
            raise DataError.at(where, f"identical to '{keys[0]}'", keys[1])
        extra = {k: v for k, v in rec.items() if k not in ("prompt", "label", "gold", "margin", *keys)}
        out.append({"prompt": prompt, "a": a, "b": b, "human": human, "extra": extra})
    return out


def _response(prompt, text):
    if isinstance(text, list) or not isinstance(prompt, list):
        return text
    return [{"role": "assistant", "content": text}]


def run_judge(cfg: JudgeConfig) -> dict:
    pairs = load_pairs(cfg.data)
    constitution = load_constitution(cfg.constitution or None)
    options = dict(batch_size=cfg.batch_size, trust_remote_code=cfg.trust_remote_code)
    if is_url(cfg.judge):
        cache = None if cfg.cache == "none" else (cfg.cache or cfg.output + ".cache.jsonl")
        options.update(api_key=os.environ.get(cfg.api_key_env), timeout=cfg.timeout, max_retries=cfg.max_retries,
                       concurrency=cfg.concurrency, cache=cache, logprobs=cfg.logprobs)
    from ..models import resolve_device

    judge = make_judge(cfg.judge, constitution, cfg.judge_model, str(resolve_device(cfg.device)), **options)
    source = f"judge:{cfg.name or judge.name}"
    verdicts = compare(judge, [p["prompt"] for p in pairs], [p["a"] for p in pairs], [p["b"] for p in pairs])
    rows = []
    for pair, v in zip(pairs, verdicts):
        base = {"p_orders": [round(v.p_first, 6), round(v.p_second, 6)], "source": source, **pair["extra"]}
        if v.winner == "tie":
            if cfg.ties == "keep":
                rows.append({"prompt": pair["prompt"], "response_a": pair["a"], "response_b": pair["b"], "tie": True,
                             "confidence": 0.5, **base})
            continue
        chosen, rejected = (pair["a"], pair["b"]) if v.winner == "a" else (pair["b"], pair["a"])
        rows.append({"prompt": pair["prompt"], "chosen": _response(pair["prompt"], chosen),
                     "rejected": _response(pair["prompt"], rejected), "confidence": round(v.confidence, 6), **base})
    stats = judge_stats(verdicts, [p["a"] for p in pairs], [p["b"] for p in pairs],
                        [p["human"] for p in pairs] if any(p["human"] is not None for p in pairs) else None)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    summary = {"stage": "judge", "judge": cfg.judge, "source": source, "constitution": constitution.name,
               "per_principle": constitution.per_principle, "rows_written": len(rows), "ties_kept": cfg.ties == "keep",
               **stats}
    if hasattr(judge, "counters"):
        summary["endpoint"] = judge.counters()
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    pb = summary["position_bias"]
    print(f"[rlhfkit judge] {len(pairs)} pairs -> {len(rows)} rows ({summary['ties']} ties, "
          f"{'kept' if cfg.ties == 'keep' else 'dropped'}); position bias "
          f"{'n/a' if pb is None else f'{pb:+.3f}'}; longer wins {summary['longer_win_rate']}"
          + (f"; human agreement {summary['human_agreement']:.3f}" if "human_agreement" in summary else "")
          + f" -> {out}")
    return summary
