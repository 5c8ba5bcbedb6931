"""The shared training loop: data order, accumulation invariance, checkpoints, the non-finite guard."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.train.sft import SFTConfig
from rlhfkit.data import load_sft
from rlhfkit.data.tokenize import collate_sft, tokenize_sft
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.train import checkpoint, distributed, loop
from rlhfkit.train.sft import nll_sum, run_sft
from rlhfkit.world.toy import write_jsonl


def test_step_indices_cover_each_epoch_once_and_reshuffle():
    n, bs = 10, 3
    steps_per_epoch = n // bs  # 3 steps, 9 examples used, 1 left over each epoch
    epoch0 = [i for s in range(3) for i in distributed.step_indices(s, n, bs, steps_per_epoch, seed=7)]
    epoch1 = [i for s in range(3, 6) for i in distributed.step_indices(s, n, bs, steps_per_epoch, seed=7)]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert epoch0 != epoch1
    assert distributed.step_indices(4, n, bs, steps_per_epoch, seed=7) == distributed.step_indices(4, n, bs, steps_per_epoch, seed=7)


def test_batch_plan():
    cfg = SFTConfig(model="m", data="d.jsonl", output_dir="o", batch_size=8, micro_batch_size=2, epochs=2.5)
    assert distributed.batch_plan(20, cfg, world=1) == (2, 5, 2)        # 20 // 8 = 2 steps/epoch, ceil(2.5 * 2)
    assert distributed.batch_plan(20, cfg, world=2) == (2, 5, 2)
    cfg.max_steps = 7
    assert distributed.batch_plan(20, cfg, world=1)[1] == 7
    with pytest.raises(distributed.TrainingError, match="fewer than batch_size"):
        distributed.batch_plan(5, cfg, world=1)
    with pytest.raises(distributed.TrainingError, match="not divisible"):
        distributed.batch_plan(20, cfg, world=3)


@pytest.fixture(scope="module")
def varied_sft(tmp_path_factory, world_dir):
    """SFT records of very different lengths, so a per-micro-batch mean would differ from the step mean."""
    words = ["good", "great", "fresh", "tasty", "lovely", "warm", "sweet", "crisp"]
    recs = [{"prompt": "how is the soup ?", "completion": " ".join(words[: 1 + i % 8])} for i in range(32)]
    return write_jsonl(tmp_path_factory.mktemp("varied") / "sft.jsonl", recs)


def _sft(world_dir, data, out, **kw):
    cfg = SFTConfig(model=world_dir["base"], data=data, output_dir=str(out), learning_rate=1e-2,
                    max_length=32, seed=3, **kw)
    return run_sft(cfg), load_file(str(out / "model.safetensors"))


def test_gradient_accumulation_matches_one_big_batch(world_dir, varied_sft, tmp_path):
    """4 micro-batches of 2 == 1 batch of 8: the loss is normalised by the step's token count."""
    _, full = _sft(world_dir, varied_sft, tmp_path / "full", batch_size=8, max_steps=3)
    _, accum = _sft(world_dir, varied_sft, tmp_path / "accum", batch_size=8, micro_batch_size=2, max_steps=3)
    # fp32 sums in another order differ by rounding; Adam divides by sqrt(v), which blows that up for
    # the odd weight whose gradient is ~0. So: (almost) every weight within 5e-5, none off by 5e-4. A
    # wrong normalisation reweights the micro-batches and moves most weights by ~lr (1e-2).
    diffs = torch.cat([(accum[n] - full[n]).abs().flatten() for n in full])
    assert (diffs > 5e-5).float().mean().item() < 1e-4 and diffs.max().item() < 5e-4, diffs.max().item()
    # and it trained: weights moved from the base model
    base = load_file(world_dir["base"] + "/model.safetensors")
    assert max((full[k] - base[k]).abs().max().item() for k in base) > 1e-3


def test_checkpoints_are_atomic_pruned_and_logged(world_dir, varied_sft, tmp_path):
    summary, _ = _sft(world_dir, varied_sft, tmp_path, batch_size=4, max_steps=6, save_steps=2,
                      save_total_limit=2, report_to=["tensorboard"])
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000004"]  # step 6 is the final folder; the limit keeps 2
    ckpt = tmp_path / "checkpoints" / "step-0000004"
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt",
            "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    # 32 examples / batch 4 = 8 steps an epoch: step 4 is epoch 0, batch 4
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 0, 4)
    (tmp_path / "checkpoints" / ".tmp-step-0000009").mkdir()  # a write cut short by a kill
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-0000004"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_second", "samples_per_second", "peak_memory_mib"} <= set(rows[0])
    assert all(r["peak_memory_mib"] > 10 for r in rows)  # peak RSS of a process with torch loaded
    # 4 examples a step: each step's tokens per example is a real SFT row's length (max_length bounds it)
    assert all(1 < r["tokens_per_second"] / r["samples_per_second"] <= 32 for r in rows), rows
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["steps"] == 6 and summary["train_seconds"] > 0
    assert summary["samples_per_second"] == pytest.approx(6 * 4 / summary["train_seconds"], rel=0.01)


def test_non_finite_loss_is_skipped_then_stops(world_dir, varied_sft, tmp_path):
    """NaN losses skip the update and count; after max_bad_steps in a row the run stops with a
    message naming the last good checkpoint, and the weights are those of the last good step."""
    cfg = SFTConfig(model=world_dir["base"], data=varied_sft, output_dir=str(tmp_path), batch_size=4,
                    max_steps=10, save_steps=2, max_bad_steps=3, learning_rate=1e-2)
    run = loop.start_run(cfg, "sft")
    model = load_causal_lm(cfg.model)

    tok = load_tokenizer(cfg.model)
    examples, _ = tokenize_sft(load_sft(varied_sft), tok, 32)
    calls = {"n": 0}

    def loss_fn(model, batch, units):
        calls["n"] += 1
        loss = nll_sum(model, batch)[0] / units
        if calls["n"] > 2:  # steps 3, 4, 5 ... are poisoned
            loss = loss * float("nan")
        return loss, {"loss": loss.item()}

    task = loop.Task(model=model, examples=examples, collate=lambda b: collate_sft(b, tok.pad_token_id),
                     loss_fn=loss_fn, units=lambda ex: sum(ex.loss_mask[1:]))
    with pytest.raises(distributed.TrainingError) as err:
        loop.train(run, task)
    assert "stopped at step 5" in str(err.value)
    assert "step-0000004" in str(err.value)
    # the checkpoint written after skipped step 3 holds the weights of good step 2
    w2 = load_file(str(tmp_path / "checkpoints" / "step-0000002" / "model.safetensors"))
    w4 = load_file(str(tmp_path / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 2]


def test_partial_batch_left_out_is_said_once(world_dir, varied_sft, tmp_path, capsys):
    """Issue #17 defect 9e: 20 examples at batch 16 train 1 step per epoch; the 4 left out are said in
    one log line (steps are whole batches: see docs/trl.md), not dropped without a word."""
    recs = load_sft(varied_sft)[:20]
    data = write_jsonl(tmp_path / "twenty.jsonl", [{"prompt": r.prompt, "completion": r.completion} for r in recs])
    summary, _ = _sft(world_dir, data, tmp_path / "out", batch_size=16, epochs=1)
    assert summary["steps"] == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if "left out" in x]
    assert lines == ["[rlhfkit sft] last partial batch: 4 of 20 examples are left out of each epoch (steps use whole "
                     "batches of 16; the data is reshuffled every epoch)"]
    assert distributed.partial_batch_note(32, 16) == ""
