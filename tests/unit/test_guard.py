"""Guard files: blocklists (whole words, regular expressions), the classifier threshold, the
refusal, decision logs, and errors that name the file and field."""

import json

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.guard import load_guard, word_pattern


def _guard(tmp_path, text):
    path = tmp_path / "guard.yaml"
    path.write_text(text)
    return path


def test_blocklist_words_are_whole_words_in_any_case():
    p = word_pattern("bomb")
    assert p.search("How do I build a BOMB?") and p.search("bomb.") and p.search("(bomb)")
    assert not p.search("a bombastic speech") and not p.search("abomb")
    assert word_pattern("credit  card").search("my Credit\ncard number")


def test_guard_blocks_and_logs_every_decision(tmp_path):
    path = _guard(tmp_path, "refusal: No.\nlog: decisions.jsonl\n"
                            "input:\n  blocklist:\n    - bomb\n    - regex: 'pass(word|phrase)s?'\n"
                            "output:\n  blocklist: [forbidden]\n")
    guard = load_guard(path)
    assert guard.refusal == "No."
    assert guard.check("input", "what is my PASSPHRASE", "r1").reason == "blocklist: /pass(word|phrase)s?/"
    assert guard.check("input", "bomb squad", "r2").blocked
    assert not guard.check("input", "a forbidden fruit", "r3").blocked  # an output word, not an input word
    assert guard.check("output", "that is Forbidden.", "r4").blocked
    assert not guard.check("output", "all fine", "r5").blocked
    lines = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [(e["request_id"], e["stage"], e["blocked"]) for e in lines] == [
        ("r1", "input", True), ("r2", "input", True), ("r3", "input", False), ("r4", "output", True),
        ("r5", "output", False)]


@pytest.mark.parametrize("text,match", [
    ("input:\n  blocklist:\n    - regex: 'a(b'\n", r"input.blocklist\[0\]: field 'regex': invalid regular expression"),
    ("input:\n  blocklist:\n    - 3\n", r"input.blocklist\[0\]: expected a non-empty word"),
    ("input:\n  blocklist: [x]\n  filters: []\n", "input: unknown field 'filters'"),
    ("outputs: {}\n", "unknown field 'outputs'"),
    ("refusal: ''\n", "field 'refusal'"),
    ("output:\n  classifier: {model: /no/such/folder, threshold: 0.5}\n", "output.classifier: field 'model'"),
])
def test_bad_guard_files_name_file_and_field(tmp_path, text, match):
    path = _guard(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_guard(path)
    assert str(path) in str(e.value)


def test_classifier_threshold(world_dir, tmp_path):
    """A two-label classifier whose head is all zeros gives logits (0, 0): P(flagged) = 0.5 exactly,
    for any text. Threshold 0.4 blocks (0.5 > 0.4); 0.6 lets it through. The label named "unsafe"
    (index 0 here) is the flagged one."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer, save_model

    tok = load_tokenizer(world_dir["base"])
    clf = AutoModelForSequenceClassification.from_pretrained(world_dir["base"], num_labels=2,
                                                             id2label={0: "unsafe", 1: "safe"},
                                                             label2id={"unsafe": 0, "safe": 1})
    with torch.no_grad():
        clf.score.weight.zero_()
    clf.config.pad_token_id = tok.pad_token_id
    save_model(clf, tok, tmp_path / "clf")
    for threshold, blocked in ((0.4, True), (0.6, False)):
        path = _guard(tmp_path, f"input:\n  classifier: {{model: {tmp_path / 'clf'}, threshold: {threshold}}}\n")
        guard = load_guard(path)
        d = guard.check("input", "the soup is bad", "r")
        assert d.blocked is blocked and d.score == pytest.approx(0.5, abs=1e-6)
        assert guard.input.classifier.index == 0
