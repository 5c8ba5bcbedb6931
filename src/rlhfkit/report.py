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

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}.note{color:#555;font-size:.9em}h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.{digits}f}" for v in value) + "]"
    return str(value)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An HTML table of dict rows; numbers right-aligned, everything escaped."""
    if not rows:
        return "<p class=note>(no rows)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
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
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
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
