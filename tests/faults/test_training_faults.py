"""Training faults other than a kill (tests/integration/test_resume.py has those): non-finite
losses and gradients, an absurd learning rate, and a checkpoint write that fails (full disk,
read-only folder). Each must end in a clear one-line message, a non-zero exit, no traceback, and
the previous checkpoint intact."""

import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main
from rlhfkit.train.sft import SFTConfig
from rlhfkit.data import load_sft
from rlhfkit.data.tokenize import collate_sft, tokenize_sft
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.train import checkpoint, loop
from rlhfkit.train.sft import nll_sum


class _PoisonGrad(torch.autograd.Function):
    """Identity forward; the backward pass returns ``value`` (NaN or inf) times the gradient."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.value, None


@pytest.mark.parametrize("where", ["loss-nan", "loss-inf", "grad-nan", "grad-inf"])
def test_non_finite_steps_are_skipped_counted_and_the_run_goes_on(world_dir, tmp_path, where):
    """Steps 3 and 4 (1-based) are poisoned, then training is healthy again: with max_bad_steps 3
    the run finishes; the two steps are skipped (weights after step 4 == after step 2), counted in
    skipped_steps, and the consecutive-bad counter resets after the good step 5."""
    cfg = SFTConfig(model=world_dir["base"], data=world_dir["sft"], output_dir=str(tmp_path), batch_size=4,
                    max_steps=6, save_steps=2, max_bad_steps=3, learning_rate=1e-2, max_length=32)
    run = loop.start_run(cfg, "sft")
    tok = load_tokenizer(cfg.model)
    examples, _ = tokenize_sft(load_sft(cfg.data), tok, 32)
    calls = {"n": 0}
    kind, value = where.split("-")
    bad = float(value)

    def loss_fn(model, batch, units):
        calls["n"] += 1  # one micro-batch per step
        poisoned = calls["n"] in (3, 4)
        if poisoned and kind == "grad":
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = _PoisonGrad.apply(logits, bad)
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            tgt = batch["input_ids"][:, 1:].unsqueeze(-1)
            mask = batch["loss_mask"][:, 1:].float()
            loss = -(logp.gather(-1, tgt).squeeze(-1) * mask).sum() / units
            assert torch.isfinite(loss)  # the loss itself is fine; only its gradient is not
        else:
            loss = nll_sum(model, batch)[0] / units
            if poisoned:
                loss = loss * bad
        return loss, {"loss": loss.item()}

    task = loop.Task(model=load_causal_lm(cfg.model), examples=examples,
                     collate=lambda b: collate_sft(b, tok.pad_token_id), loss_fn=loss_fn,
                     units=lambda ex: sum(ex.loss_mask[1:]))
    summary = loop.train(run, task)
    assert summary["skipped_steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 2, 2, 2]
    # metrics.jsonl writes a non-finite number as a string ("nan", "inf")
    assert all(math.isfinite(float(r["grad_norm"])) for r in (rows[0], rows[1], rows[4], rows[5]))
    assert not math.isfinite(float(rows[2]["grad_norm"])) and not math.isfinite(float(rows[3]["grad_norm"]))
    w2 = load_file(str(tmp_path / "checkpoints" / "step-0000002" / "model.safetensors"))
    w4 = load_file(str(tmp_path / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)  # the poisoned updates never reached the weights
    final = task.model.state_dict()
    assert all(torch.isfinite(v).all() for v in final.values())
    assert max((final[k] - w4[k]).abs().max().item() for k in w4 if k in final) > 1e-4  # steps 5, 6 trained


def _sft_args(world_dir, out, *extra):
    return ["sft", "--model", world_dir["base"], "--data", world_dir["sft"], "--output_dir", str(out),
            "--batch_size", "4", "--max_length", "32", "--seed", "1", *extra]


def test_absurd_learning_rate_stops_the_cli_naming_the_last_good_checkpoint(world_dir, tmp_path):
    """learning_rate 1e30: step 1 is finite, then the weights overflow and every later step is non-finite.
    After max_bad_steps 3 in a row: exit code 2, one line naming the last checkpoint, no traceback."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "rlhfkit", *_sft_args(world_dir, out, "--learning_rate", "1e30",
                        "--max_steps", "20", "--save_steps", "2", "--max_bad_steps", "3", "--warmup_ratio", "0")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr[-2000:]
    assert "consecutive steps had a non-finite loss or gradient" in errors[0]
    latest = checkpoint.latest_checkpoint(out)
    assert latest is not None and f"the last good checkpoint is {latest}" in errors[0]
    assert "stopped at step" in errors[0] and "lower learning_rate" in errors[0]
    assert not (out / "model.safetensors").exists() and not (out / "summary.json").exists()
    skipped = [json.loads(x)["skipped_steps"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert skipped[0] == 0 and skipped[-1] >= 1  # step 1 trained; the bad ones were counted
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == int(latest.name.split("-")[1])
    assert load_file(str(latest / "model.safetensors"))  # the named checkpoint is complete and readable


def test_absurd_learning_rate_stops_an_online_run(world_dir, tmp_path, capsys):
    """The online engine (GRPO here; PPO and RLOO share it) has the same guard and the same exit."""
    out = tmp_path / "grpo"
    rc = main(["grpo", "--model", world_dir["base"], "--data", world_dir["prompts"], "--output_dir", str(out),
               "--reward_fn", "rlhfkit.world.toy:kind_reward", "--num_generations", "2", "--batch_size", "4",
               "--max_new_tokens", "6", "--max_prompt_length", "16", "--max_steps", "12", "--save_steps", "1",
               "--max_bad_steps", "2", "--learning_rate", "1e30", "--warmup_ratio", "0", "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    line = [x for x in err.splitlines() if "error" in x]
    assert len(line) == 1 and "non-finite loss or gradient" in line[0], err[-2000:]
    assert f"the last good checkpoint is {checkpoint.latest_checkpoint(out)}" in line[0]
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_checkpoint_write_error_is_one_line_and_keeps_the_previous_checkpoint(world_dir, tmp_path, capsys,
                                                                             monkeypatch, code):
    """The disk fills up (ENOSPC) or the folder turns read-only (EROFS) while the step-4 checkpoint is
    written (these tests run as root, so a chmod would not stop the writes: the error is injected
    into the optimiser-state write). The run stops with one line naming the failed checkpoint and
    the last good one; step 2's checkpoint is intact, no half-written folder is left, and a resume
    continues from it."""
    out = tmp_path / "run"
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        if "step-0000004" in str(f):
            raise OSError(code, os.strerror(code), str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    args = _sft_args(world_dir, out, "--max_steps", "6", "--save_steps", "2", "--learning_rate", "1e-3")
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if "error" in x]
    assert len(line) == 1, err
    ckpts = out / "checkpoints"
    assert f"could not write checkpoint {ckpts / 'step-0000004'} at step 4" in line[0]
    assert os.strerror(code) in line[0]
    assert f"the last good checkpoint is {ckpts / 'step-0000002'}" in line[0]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002"]  # no .tmp-* left behind
    assert json.loads((ckpts / "step-0000002" / "trainer_state.json").read_text())["step"] == 2
    assert not (out / "model.safetensors").exists()

    monkeypatch.undo()  # the disk has room again
    rc = main(args + ["--resume", "true"])
    out_text = capsys.readouterr()
    assert rc == 0, out_text.err[-2000:]
    assert f"resumed from {ckpts / 'step-0000002'} (step 2)" in out_text.out + out_text.err
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_final_model_write_error_is_one_line_naming_the_last_checkpoint(world_dir, tmp_path, capsys, monkeypatch):
    """The disk fills up while the final model folder is written: one line, exit code 2, and the
    last periodic checkpoint named and intact."""
    out = tmp_path / "run"

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "model.safetensors"))

    monkeypatch.setattr(checkpoint, "write_final_model", full_disk)  # the final folder only, not the checkpoints
    rc = main(_sft_args(world_dir, out, "--max_steps", "4", "--save_steps", "2", "--learning_rate", "1e-3"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x]
    ckpt = out / "checkpoints" / "step-0000002"
    assert f"could not write the final model to {out}: [Errno 28] No space left on device" in line
    assert f"the last good checkpoint is {ckpt}" in line
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    assert not (out / "summary.json").exists()
