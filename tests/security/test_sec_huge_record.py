"""#19.16: one huge record costs what a long normal one does.

A 100 MB record in DPO data used to be tokenized whole before truncation: 242 s and 10.2 GB. Text
is now cut to ``CHARS_PER_TOKEN`` characters per token of the length limit before tokenizing (a
prompt keeps its end, a response its start, as truncation does), with a warning naming the file,
line and field. Measured on this machine with the test's 800-token byte-level BPE, max_length 512
(a 4 MB chosen: before 11.1 s and +652 MB peak RSS, ~2.8 s and ~160 MB per MB; after 0.03 s, +0.1 MB;
20 MB: after 0.07 s, +0.6 MB).
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from real_layouts import byte_level_bpe
from rlhfkit.data import tokenize as tokenize_module
from rlhfkit.data.formats import parse_preference, parse_sft
from rlhfkit.data.load import Location
from rlhfkit.data.tokenize import tokenize_preference, tokenize_sft

WORDS = "the a of and rain window garden hash map prime number answer question assistant".split()


def _text(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_chars // 5))


# Runs in a fresh interpreter so its peak RSS is its own: load a file holding a 20 MB response
# (line 2) and a 20 MB prompt (line 3), then tokenize; report time and the peak RSS growth.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
from real_layouts import byte_level_bpe
from rlhfkit.data import load_preference
from rlhfkit.data.tokenize import tokenize_preference
tok = byte_level_bpe("chatml")
examples = load_preference(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
pairs, n_cut = tokenize_preference(examples, tok, 512, 256)
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": seconds, "rss_mb": grown / 1024, "n_cut": n_cut,
                  "lens": [[len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)] for p in pairs]}))
"""


BIG_CHARS = 20_000_000


def test_20mb_records_tokenize_fast_in_bounded_memory(tmp_path):
    big = _text(100_000) * (BIG_CHARS // 100_000)
    rows = [{"prompt": "Hi.", "chosen": "Hello.", "rejected": "Go away."},
            {"prompt": "Say something long.", "chosen": big, "rejected": "No."},
            {"prompt": big, "chosen": "Yes.", "rejected": "No."}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    del big, rows
    tests_dir = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), tests_dir], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["rss_mb"] < 300, got  # before: ~160 MB per MB of text, over 3 GB here
    assert got["seconds"] < 30, got  # before: ~2.8 s per MB, about a minute here; after: well under 1 s
    assert got["n_cut"] == 2 and got["lens"][1][1] == 512 - got["lens"][1][0] and got["lens"][2][0] == 256
    warnings = [line for line in proc.stderr.splitlines() if "before tokenizing" in line]
    assert len(warnings) == 2, proc.stderr[-2000:]
    assert warnings[0].startswith(f"{path}:2: field 'chosen': ")
    assert warnings[1].startswith(f"{path}:3: field 'prompt': ")


@pytest.fixture(scope="module")
def tok():
    return byte_level_bpe("chatml")


def _uncut(monkeypatch):
    monkeypatch.setattr(tokenize_module, "CHARS_PER_TOKEN", 10**9)


def test_cut_changes_nothing_that_truncation_keeps(tok, monkeypatch, caplog):
    """Records long enough to be cut (~170k characters, limit 64 tokens) tokenize to the same ids
    as without the cut: strings and chat, prompts (end kept) and responses (start kept), SFT too."""
    long_a, long_b = _text(150_000, 1), _text(150_000, 2)
    where = Location("data.jsonl", 4)
    user = {"role": "user", "content": long_a}
    prefs = [parse_preference({"prompt": long_a, "chosen": " " + long_b, "rejected": " short"}, where),
             parse_preference({"prompt": [user, {"role": "assistant", "content": "ok"},
                                          {"role": "user", "content": "And?"}],
                               "chosen": [{"role": "assistant", "content": long_b}],
                               "rejected": [{"role": "assistant", "content": "no"}]}, where)]
    sfts = [parse_sft({"text": long_a}, where), parse_sft({"messages": [user, {"role": "assistant", "content": long_b}]},
                                                          where),
            parse_sft({"prompt": "Tell me.", "completion": " " + long_b}, where)]
    with caplog.at_level("WARNING", logger="rlhfkit.data.tokenize"):
        cut_pairs, n_pairs = tokenize_preference(prefs, tok, 64, 32)
        cut_sft, n_sft = tokenize_sft(sfts, tok, 64)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 7 and all(m.startswith("data.jsonl:4: field '") for m in messages), messages
    assert messages[0] == (f"data.jsonl:4: field 'prompt': {len(long_a)} characters cut to their last 3072 "
                           "before tokenizing (a 32-token limit)")  # 64 characters x (32 + 16 slack) tokens
    _uncut(monkeypatch)
    full_pairs, m_pairs = tokenize_preference(prefs, tok, 64, 32)
    full_sft, m_sft = tokenize_sft(sfts, tok, 64)
    assert (n_pairs, n_sft) == (m_pairs, m_sft) == (2, 3)
    for a, b in zip(cut_pairs, full_pairs):
        assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
    for a, b in zip(cut_sft, full_sft):
        assert (a.input_ids, a.loss_mask) == (b.input_ids, b.loss_mask)


def test_normal_records_are_not_cut(tok, caplog):
    ex = parse_preference({"prompt": "Q: hi", "chosen": " Hello there.", "rejected": " Go."})
    with caplog.at_level("WARNING", logger="rlhfkit.data.tokenize"):
        tokenize_preference([ex], tok, 512, 256)
    assert caplog.records == []
