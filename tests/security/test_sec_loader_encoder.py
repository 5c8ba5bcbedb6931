"""Issue #19 point 15: `rlhfkit coverage --encoder DIR` follows the rule of every other loader:
safetensors only, a folder with only pickle weights refused in one line naming it and
`allow_pickle: true`, nothing unpickled. It used to call from_pretrained(use_safetensors=None),
so only torch's weights_only default stood between a malicious .bin and code execution (and the
refusal was a 39-line traceback)."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main


class _Boom:
    """Unpickling this runs `open(marker, "w")`: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def prompts(tmp_path):
    data, evals = tmp_path / "prefs.jsonl", tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p {i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(4)))
    evals.write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(4)))
    return ["--data", str(data), "--eval_data", str(evals), "--clusters", "2", "--min_pairs", "1"]


def _without_safetensors(world_dir, folder, weights: bytes | None = None):
    shutil.copytree(world_dir["base"], folder)
    if weights is None:
        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(weights)
    (folder / "model.safetensors").unlink()
    return folder


def test_malicious_pickle_encoder_is_refused_in_one_line(world_dir, tmp_path, prompts, capsys):
    marker = tmp_path / "pwned"
    evil = _without_safetensors(world_dir, tmp_path / "evil", pickle.dumps({"w": _Boom(marker)}))
    rc = main(["coverage", *prompts, "--encoder", str(evil), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and not marker.exists()
    (line,) = err.strip().splitlines()
    assert f"{evil}: has only pickle weights (pytorch_model.bin)" in line and "allow_pickle: true" in line
    assert not (tmp_path / "out" / "summary.json").exists()


def test_pickle_encoder_loads_only_with_allow_pickle(world_dir, tmp_path):
    from rlhfkit.evaluate.coverage import embed

    folder = _without_safetensors(world_dir, tmp_path / "pickled")
    with pytest.raises(OSError, match="only pickle weights"):
        embed(["a b"], str(folder))
    x = embed(["a b", "c"], str(folder), allow_pickle=True)
    assert x.shape[0] == 2 and abs(float((x[0] ** 2).sum()) - 1.0) < 1e-5
    safe = embed(["a b", "c"], world_dir["base"])  # a safetensors folder loads as before, same vectors
    assert abs(safe - x).max() < 1e-6
