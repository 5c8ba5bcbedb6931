"""rlhfkit's losses and gradients equal TRL 1.16's on one batch of hh-rlhf-style rows
(benchmarks/trl_parity.py: DPO sigmoid beta 0.1, the reward model with and without margin,
completion-only SFT, SFT on messages). Skips only where ``trl`` is not installed.

The raw hh-rlhf layout (prompt implicit in chosen/rejected) does not match yet: rlhfkit's implicit
split keeps the space after "Assistant:" in the prompt, so its response tokens start with a bare
space token and the next word without its space ("Ġ", "I") where TRL has "ĠI". Those cases are
strict xfails that the fix (branch tok) turns into passes; the same rows with an explicit prompt,
split TRL's way, check the harness and pass today.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl")

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "trl_parity.py"
_spec = importlib.util.spec_from_file_location("trl_parity", HERE)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

CASES = list(parity.CASES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return parity.make_models(tmp_path_factory.mktemp("parity"))


@pytest.mark.parametrize("case", CASES)
def test_trl_parity(case, models, tmp_path):
    row = parity.compare(case, models, tmp_path)
    print("\n" + parity.table([row]))
    assert row["dloss"] <= parity.LOSS_TOL and row["grad_rel"] <= parity.GRAD_TOL, parity.table([row])


def test_explicit_rows_split_where_trl_splits():
    """The harness's explicit layout is TRL's own split of the hh rows: the prompt ends at the last
    "Assistant:", each response starts with its space, and prompt + response is the transcript."""
    from trl.data_utils import extract_prompt

    for raw, explicit in zip(parity.hh_rows(), parity.explicit_rows()):
        assert extract_prompt(raw) == {k: explicit[k] for k in ("prompt", "chosen", "rejected")}
        assert explicit["prompt"].endswith("\n\nAssistant:") and explicit["chosen"].startswith(" ")


def test_grad_rel_diff_is_max_abs_difference_over_max_abs_reference():
    """max |g1 - g2| / max |g2| over all tensors: here max |diff| = 0.5 (b[1]), max |g2| = 4 (a[0])."""
    import torch

    ours = {"a": torch.tensor([4.0, 1.0]), "b": torch.tensor([0.0, 2.5])}
    theirs = {"a": torch.tensor([4.0, 1.0]), "b": torch.tensor([0.0, 2.0])}
    assert parity.grad_rel_diff(ours, theirs) == 0.5 / 4.0
    assert parity.grad_rel_diff({"a": ours["a"]}, theirs) == float("inf")  # a parameter missing on one side
