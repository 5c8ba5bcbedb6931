"""The world's base model: a small build through the cache, loaded back with the Auto classes."""

import json
import math

import pytest

from rlhfkit.world import base, tasks

SMALL = {"steps": 40, "num_texts": 2000, "hidden_size": 64}


@pytest.mark.slow
def test_cached_base_builds_once_and_pretraining_lowers_the_loss(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = base.cached_base(seed=0, cache_dir=tmp_path, **SMALL)
    assert path == str(tmp_path / base.base_key(0, **SMALL))
    assert [p.name for p in tmp_path.iterdir()] == [base.base_key(0, **SMALL)]  # no temp folder left

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tok) == len(tasks.vocabulary()) + 7

    # Second call: same folder, nothing rebuilt.
    mtime = (tmp_path / base.base_key(0, **SMALL) / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*a, **kw):
        raise AssertionError("rebuilt a cached base")

    monkeypatch.setattr(base, "build_base", no_rebuild)
    assert base.cached_base(seed=0, cache_dir=tmp_path, **SMALL) == path
    assert (tmp_path / base.base_key(0, **SMALL) / "model.safetensors").stat().st_mtime_ns == mtime

    # Pretraining lowered the loss: the first logged training loss is near ln(V) (a fresh model is
    # close to uniform), and the held-out loss at the end is at least 1.5 nats lower.
    summary = json.loads((tmp_path / base.base_key(0, **SMALL) / "summary.json").read_text())
    metrics = [json.loads(line) for line in open(f"{path}/metrics.jsonl")]
    first = next(m["loss"] for m in metrics if "loss" in m)
    assert summary["steps"] == 40
    assert abs(first - math.log(len(tok))) < 0.5
    assert summary["eval_loss"] < first - 1.5
