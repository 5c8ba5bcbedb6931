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
