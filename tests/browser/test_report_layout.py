"""The demo world's report as a reader sees it: Chromium at 1280 px. No table is wider than the
page, no header is a raw snake_case key, every figure fits.

The report is built from hand-made stage summaries and metrics with the demo's real keys and
columns (``world.report.build``), so the layout is checked in seconds without running the demo."""

import json
import re

from rlhfkit.report import header
from rlhfkit.world.report import build

CATS = ("advice", "arithmetic", "dish", "fact", "harmful", "rude")


def _eval_row(policy, i):
    row = {"policy": policy, "gold_reward": 1.234 + i, "length_words": 9.87, "kl_to_baseline": 1.3456 * i,
           "gap_correct": 0.0, "gap_wrong": 0.8125, "gap_unsure": 0.1875, "gap_gold_reward": -0.6,
           **{f"gold/{c}": 0.5 * i for c in CATS}, "correct/arithmetic": 0.4, "correct/fact": 0.7,
           "degenerate": 0.1187, **{f"degenerate/{k}": 0.0312 for k in ("empty", "over-long", "padding", "repeated")}}
    if i:
        row.update(gold_winrate_vs_sft=0.7083, gold_winrate_ci_low=0.6751, gold_winrate_ci_high=0.7421)
    return row


def _report(root):
    for stage, keys in {"sft": ["loss"], "rm": ["loss", "accuracy"], "dpo": ["loss", "reward_accuracy", "logratio"],
                        "ppo": ["reward", "kl", "kl_k3"]}.items():
        (root / stage).mkdir(parents=True)
        (root / stage / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, **{k: (-0.015 * s if k == "logratio" else 1.0 / s) for k in keys}}) + "\n"
            for s in range(1, 11)))
    (root / "eval").mkdir()
    long = "a very long sample " * 12 + "withaverylongunbrokenwordthatcouldpushthecolumnwide" * 2
    (root / "eval" / "samples.jsonl").write_text("".join(
        json.dumps({"prompt": f"what is the capital of {c} ?", "category": c, "sft": long, "dpo": "velmar .",
                    "ppo": long}) + "\n" for c in CATS))
    evals = {p: _eval_row(p, i) for i, p in enumerate(("sft", "dpo", "ppo"))}
    summaries = {"eval": evals, "val": evals, "round1/eval": evals, "round1/val": evals,  # the round column too
                 "rm": {"eval_accuracy": 0.749, "eval_accuracy_ci": [0.73, 0.767], "eval_pairs": 2304},
                 "labels": {"ceiling_accuracy": 0.785}}
    return build(root, summaries)


def test_report_tables_fit_at_1280_px_and_speak_words(browser, tmp_path, artifacts):
    path = _report(tmp_path / "demo")
    page = browser.new_page(viewport={"width": 1280, "height": 2000})
    try:
        page.goto(path.as_uri())
        viewport = page.evaluate("document.documentElement.clientWidth")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport  # no sideways scrolling
        tables = page.query_selector_all("table")
        assert len(tables) >= 4  # policies, categories, reward model, samples
        for t in tables:
            box = t.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= viewport, (t.inner_text()[:80], box)
        heads = [h.inner_text().strip() for h in page.query_selector_all("th")]
        raw = [h for h in heads if re.fullmatch(r"[a-z0-9]+([_/][a-z0-9]+)+", h) or "_" in h]
        assert not raw, raw
        assert "win rate, 95% CI low" in heads and "knowledge gap: confidently wrong" in heads
        for img in page.query_selector_all("img"):
            box = img.bounding_box()
            assert box["x"] + box["width"] <= viewport, box
        page.screenshot(path=str(artifacts / "demo_report_1280.png"), full_page=True)
    finally:
        page.close()


def test_header_words():
    assert header("gold_winrate_ci_low") == "win rate, 95% CI low"
    assert header("gold/dish") == "gold: dish"
    assert header("random_ci_high") == "random 95% CI high"
    assert header("logratio") == "log-ratio to reference per token"
