"""Self-contained HTML reports: tables, figures embedded as PNG data URIs, side-by-side samples.

A report opens in a browser with no network access: no scripts, no fonts or styles from a CDN,
every figure inside the file. Text from models and data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

# Tables fit the page: headers and cells wrap (long words too), numbers stay on one line.
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;max-width:100%;font-size:.9em}th,td{border:1px solid #ccc;
padding:.3em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere;min-width:5em}th{background:#f3f3f3;
font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%}.note{color:#555;font-size:.9em}h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.{digits}f}" for v in value) + "]"
    return str(value)


# Column keys -> the words a reader sees (tables, figure axes, lab markdown). Keys not listed go
# through ``header``'s word rules, so no table shows a raw snake_case key.
HEADERS = {
    "gold_reward": "gold reward", "gold_winrate_vs_sft": "gold win rate vs SFT",
    "gold_winrate_ci_low": "win rate, 95% CI low", "gold_winrate_ci_high": "win rate, 95% CI high",
    "kl_to_baseline": "KL to SFT (nats)", "length_words": "length (words)", "degenerate": "degenerate outputs",
    "gap_correct": "knowledge gap: correct", "gap_wrong": "knowledge gap: confidently wrong",
    "gap_unsure": "knowledge gap: says it does not know", "gap_gold_reward": "knowledge gap: gold reward",
    "eval_prompts": "held-out prompts", "pairs_near": "preference pairs near",
    "nearest_pair_similarity": "nearest pair (cosine)", "logratio": "log-ratio to reference per token",
    "reward_accuracy": "reward accuracy", "kl": "KL to reference (nats)", "kl_k3": "KL, k3 estimator (nats)",
    "label_gold_agreement": "labels agreeing with gold", "rm_gold_accuracy": "reward-model accuracy (gold)",
    "rm_gold_accuracy_ci_low": "RM accuracy, 95% CI low", "rm_gold_accuracy_ci_high": "RM accuracy, 95% CI high",
    "asked_in_pairs_correct": "fact asked in the pairs: correct",
    "pretraining_only_correct": "fact only in pretraining: correct",
}
_WORDS = {"sft": "SFT", "dpo": "DPO", "ppo": "PPO", "rm": "RM", "kl": "KL", "ci": "95% CI", "winrate": "win rate",
          "heldout": "held-out", "vs": "vs"}


def header(key: str) -> str:
    """The words for a column key: ``HEADERS``, else its parts as words ("gold/dish" -> "gold: dish",
    "random_ci_low" -> "random 95% CI low")."""
    if key in HEADERS:
        return HEADERS[key]
    parts = []
    for part in str(key).split("/"):
        parts.append(" ".join(_WORDS.get(w, w) for w in part.split("_") if w))
    return ": ".join(parts)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of dict rows, headers in words (``header``); numbers right-aligned, all escaped."""
    if not rows:
        return "<p class=note>(no rows)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(header(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cls = " class=num" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def figure(fig) -> str:
    """A matplotlib figure as an <img> with the PNG inside (no external file, no network)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png(buf.getvalue())


def png(data: bytes) -> str:
    """PNG bytes as an <img> with the data inside."""
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def curves(runs: dict[str, str | Path], keys: list[str], title: str = "") -> str:
    """Training curves: one panel per metric key, one line per run (its metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, path in runs.items():
            rows = [r for r in read_metrics(path) if isinstance(r.get(key), (int, float))]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=name)
        ax.set_title(header(key))
        ax.set(xlabel="step", ylabel=header(key))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return figure(fig)


def side_by_side(prompts: list[str], columns: dict[str, list[str]]) -> str:
    """Samples of several policies for the same prompts, one row per prompt."""
    rows = [{"prompt": p, **{name: texts[i] for name, texts in columns.items()}} for i, p in enumerate(prompts)]
    return table(rows, ["prompt", *columns])


def write(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write the report: ``sections`` are (heading, HTML body) pairs."""
    body = "".join(f"<h2>{esc(h)}</h2>{b}" for h, b in sections)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
