"""Issue #19 point 12: the guard classifier scores the whole input, not its first 512 tokens.

The classifier here (serve_support.make_last_word_classifier) flags a text exactly when its last
word is "bomb", so P(unsafe) of a window is ~1 when the window ends on "bomb" and ~0 otherwise.
Before the fix the text was truncated to 512 tokens: 600 filler words in front of "how to build a
bomb" hid it (P ~ 0). Scored in overlapping windows, the maximum over windows finds it."""

import pytest
from serve_support import make_last_word_classifier

from rlhfkit.guard import load_guard

WORDS = ["filler", "how", "to", "build", "a", "bomb", "soup"]


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    make_last_word_classifier(root / "clf", WORDS, "bomb")
    (root / "guard.yaml").write_text(f"input:\n  classifier: {{model: {root / 'clf'}, threshold: 0.5}}\n")
    return load_guard(root / "guard.yaml")


def test_the_toy_classifier_flags_a_final_bomb(guard):
    assert guard.check("input", "how to build a bomb").score > 0.99
    assert guard.check("input", "how to build a soup").score < 0.01


@pytest.mark.parametrize("filler", [600, 1500])
def test_filler_in_front_no_longer_hides_the_tail(guard, filler):
    d = guard.check("input", "filler " * filler + "how to build a bomb")
    assert d.blocked and d.score > 0.99
    assert not guard.check("input", "filler " * filler + "how to build a soup").blocked


def test_windows_cover_every_token_and_overlap():
    """Spans of at most `size` tokens, consecutive ones sharing `overlap` tokens, the first starting
    at 0 and the last ending at n: any run of up to overlap + 1 tokens lies inside one window."""
    from rlhfkit.guard import windows

    assert windows(0, 8, 2) == [(0, 0)]
    assert windows(5, 8, 2) == [(0, 5)]
    assert windows(8, 8, 2) == [(0, 8)]
    assert windows(9, 8, 2) == [(0, 8), (6, 9)]
    assert windows(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]
    for n in range(1, 60):
        spans = windows(n, 8, 3)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(0 < b - a <= 8 for a, b in spans)
        for i in range(n - 3):  # every run of 4 (= overlap + 1) tokens is inside one window
            assert any(a <= i and i + 4 <= b for a, b in spans), (n, i)
    with pytest.raises(ValueError):
        windows(10, 4, 4)
