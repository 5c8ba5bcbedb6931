"""Reports are self-contained (no network), escaped, and carry their figures inline."""

import base64
import json
import re

from rlhfkit import report


def test_report_is_self_contained_and_escaped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    path = report.write(tmp_path / "r.html", "t <1>", [
        ("numbers", report.table([{"name": "<script>alert(1)</script>", "acc": 0.91234}])),
        ("curves", report.curves({"run": metrics}, ["loss"])),
        ("samples", report.side_by_side(["p & q"], {"sft": ["a"], "dpo": ["b <b>"]})),
    ])
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "0.912" in page and "p &amp; q" in page and "b &lt;b&gt;" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched from the network
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_trailing_mean_hand_derived():
    from rlhfkit.world.report import smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0, 4.0], window=10) == [2.0, 3.0]
