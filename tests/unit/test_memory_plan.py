"""The memory planner against numbers derived by hand, and the tables of docs/training.md against the planner."""

import re
from pathlib import Path

import pytest

from rlhfkit.memory_plan import PRESETS, Shape, estimate_shape, lora_params, main, model_bytes, plan, readme_tables, total

GB = 1e9


@pytest.mark.parametrize("stage, want_gb", [(0, 120.0), (1, 31.40625), (2, 16.640625), (3, 1.875)])
def test_zero_paper_figure_1(stage, want_gb):
    """ZeRO (Rajbhandari et al. 2020), Fig. 1: Psi = 7.5B parameters, N_d = 64 GPUs, mixed-precision
    Adam (K = 12), per GPU: stage 0 (2 + 2 + 12) Psi = 120 GB; stage 1 2 Psi + 2 Psi + 12 Psi / 64
    = 30 + 1.40625 = 31.4 GB; stage 2 2 Psi + 14 Psi / 64 = 15 + 1.640625 = 16.6 GB; stage 3
    16 Psi / 64 = 1.875 GB."""
    psi = 7_500_000_000
    got = sum(model_bytes(psi, psi, stage, 64, "mixed").values())
    assert got == pytest.approx(want_gb * GB, rel=1e-12)


def test_full_ppo_7b_on_one_gpu():
    """N = 7e9, mixed precision, no ZeRO: policy and value model train (16 B/param: 2 + 2 + 12),
    reference and reward model are frozen bf16 (2 B/param):
    policy 112e9 + reference 14e9 + reward 14e9 + value 112e9 = 252e9 bytes;
    of which weights 4 x 14e9 = 56e9, gradients 2 x 14e9 = 28e9, optimiser 2 x 84e9 = 168e9."""
    shape = Shape(7_000_000_000, 4096, 32, 11008, 4096)
    p = plan(shape, "ppo", value="separate")
    assert p["policy"] == {"weights": 14e9, "gradients": 14e9, "optimizer": 84e9}
    assert p["reference"] == p["reward"] == {"weights": 14e9, "gradients": 0.0, "optimizer": 0.0}
    head = 4097  # the critic's scalar head (H + 1), trained in full: 16 B/param
    assert total(p) == pytest.approx(252e9 + 16 * head, abs=1e-3)
    assert p["total"]["weights"] == pytest.approx(56e9 + 2 * head)
    # fp32 (rlhfkit on CPU): 4 + 4 + 8 per trained parameter, frozen models in 4 bytes
    f = plan(shape, "ppo", precision="fp32", value="shared")
    assert f["policy"] == {"weights": 28e9, "gradients": 28e9, "optimizer": 56e9}
    assert total(f) == pytest.approx(112e9 + 2 * 28e9 + 16 * head, abs=1e-3)


def test_lora_count_and_lora_ppo_7b():
    """Llama 2 7B (H 4096, I 11008, 32 layers, no GQA), r = 16, every linear layer of every block:
    32 x 16 x (9 x 4096 + 2 x 4096 + 3 x 11008) = 32 x 16 x 78080 = 39,976,960 adapter parameters
    (what peft prints for this model). LoRA PPO, mixed: the policy holds its base frozen (2 B/param)
    and the adapter as weights, 2 (N + a), plus the adapter's gradients and optimiser state, 2a + 12a;
    no reference; the reward model 2N; the LoRA critic 2 (N + a + h) + 14 (a + h), h = 4097 its head."""
    shape = PRESETS["7B"]
    a, n, h = 39_976_960, 6_738_415_616, 4097
    assert lora_params(shape, 16) == a
    p = plan(shape, "ppo", lora_r=16)
    assert sum(p["policy"].values()) == 2 * (n + a) + 14 * a
    assert sum(p["reference"].values()) == 0
    assert sum(p["value"].values()) == 2 * (n + a + h) + 14 * (a + h)
    assert total(p) == 2 * (n + a) + 14 * a + 2 * n + 2 * (n + a + h) + 14 * (a + h)


def test_zero3_shards_frozen_models_and_dpo_roles():
    """DPO, N = 1e9, 8 GPUs: the resident reference (2N = 2e9 B) is replicated up to stage 2 and
    sharded at stage 3 (2e9 / 8 = 0.25e9 B); precompute_ref and LoRA drop it."""
    shape = Shape(1_000_000_000, 2048, 16, 5632, 2048)
    assert plan(shape, "dpo", stage=2, gpus=8)["reference"]["weights"] == 2e9
    assert plan(shape, "dpo", stage=3, gpus=8)["reference"]["weights"] == 0.25e9
    assert sum(plan(shape, "dpo", precompute_ref=True)["reference"].values()) == 0
    assert set(plan(shape, "sft")) == {"policy", "total"}
    with pytest.raises(ValueError):
        plan(shape, "dpo", stage=4)


def test_estimated_shape_is_close_to_the_real_one():
    """A parameter count alone gives an adapter count within 20% of the real architecture's."""
    for name in ("7B", "13B"):
        real = PRESETS[name]
        assert abs(lora_params(estimate_shape(real.params), 16) / lora_params(real, 16) - 1) < 0.2, name


def test_training_doc_holds_the_generated_tables():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    block = re.search(r"<!-- memory-plan:start -->\n(.*?)\n<!-- memory-plan:end -->", doc, re.S)
    assert block, "docs/training.md: the memory-plan block is missing"
    assert block.group(1).strip() == readme_tables().strip(), "docs/training.md tables are stale: python -m rlhfkit.memory_plan"


def test_command_line_prints_a_table_for_any_size(capsys):
    main(["--params", "3e9", "--algo", "dpo", "--gpus", "4"])
    out = capsys.readouterr().out
    assert "| 3B full |" in out and "ZeRO-3, 4 GPUs" in out and "reference weights" in out
