"""Shared fixtures: tiny models and data built on the spot (no network, no hub)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """The toy world's string-format data and a tiny random-init base model."""
    from rlhfkit.models import make_tiny_model_dir
    from rlhfkit.world import toy

    root = tmp_path_factory.mktemp("world")
    paths = toy.write_dataset(root / "data", seed=0)
    paths["base"] = make_tiny_model_dir(root / "base", toy.vocabulary_texts(), seed=0, hidden_size=128)
    return paths


@pytest.fixture(scope="session")
def sft_dir(world_dir, tmp_path_factory):
    """The toy world's SFT model: says kind and unkind reviews about equally often."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import run_sft

    out = tmp_path_factory.mktemp("sft")
    run_sft(SFTConfig(model=world_dir["base"], data=world_dir["sft"], output_dir=str(out), max_steps=300,
                      learning_rate=2e-3, batch_size=32, max_length=32, warmup_ratio=0.1, logging_steps=50, seed=0))
    return str(out)
