"""The refusals of ``train.fsdp.prepare`` that need no second process: DeepSpeed, an FSDP1
accelerate config, and a sharding request the engine did not honour (never a silent fallback).
The accelerator is a stand-in holding only what ``prepare`` reads."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from rlhfkit.train.distributed import TrainingError
from rlhfkit.train.fsdp import prepare


def _run(kind, world=2, fsdp=False, version=2, prepare_fn=None):
    acc = SimpleNamespace(distributed_type=kind, num_processes=world, device=torch.device("cpu"),
                          state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)),
                          prepare=prepare_fn or (lambda m, o: (m, o)))
    return SimpleNamespace(accelerator=acc, cfg=SimpleNamespace(fsdp=fsdp), print=lambda m: None)


def _model_and_optimizer():
    model = torch.nn.Linear(3, 3)
    return model, torch.optim.AdamW(model.parameters())


def test_deepspeed_is_refused_naming_the_supported_engine(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(TrainingError, match="DeepSpeed is not supported: FSDP2 is rlhfkit's sharding engine"):
        prepare(_run(DistributedType.DEEPSPEED), *_model_and_optimizer())


def test_an_fsdp1_accelerate_config_is_refused(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(TrainingError, match="fsdp_version 1; rlhfkit shards with FSDP2: set fsdp_version: 2"):
        prepare(_run(DistributedType.FSDP, version=1), *_model_and_optimizer())


def test_sharding_asked_for_but_not_done_by_the_engine_stops(monkeypatch):
    """accelerate's FSDP path returning an unsharded module (e.g. a plugin that did nothing):
    the run stops instead of training on as if it were sharded."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(TrainingError, match="accelerate FSDP config: the model was not sharded"):
        prepare(_run(DistributedType.FSDP), *_model_and_optimizer())


def test_no_request_on_one_process_is_the_plain_engine(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    run = _run(DistributedType.NO, world=1)
    model, _ = prepare(run, *_model_and_optimizer())
    assert run.engine["engine"] == "single process" and run.engine["sharding"].startswith("none")
    assert isinstance(model.module, torch.nn.Linear)


def test_a_sharded_checkpoint_resumes_only_on_the_process_count_that_wrote_it(tmp_path):
    import json

    from rlhfkit.train.dcp import load_sharded

    ckpt = tmp_path / "step-0000002"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "processes": 2, "sharded": "dcp"}))
    run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=4, process_index=0), print=lambda m: None)
    with pytest.raises(TrainingError, match="written by 2 processes and this run has 4; a sharded checkpoint resumes "
                                            "on as many processes as wrote it"):
        load_sharded(run, None, None, None, {}, ckpt)
