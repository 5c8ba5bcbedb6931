"""`rlhfkit pipeline`: stages feed each other, unchanged stages are skipped, changes propagate downstream."""

import json
from dataclasses import dataclass, field

import pytest
import yaml

from rlhfkit.config import ConfigError
from rlhfkit.pipeline import run_pipeline


@dataclass
class Cfg:
    output_dir: str = field(default="", metadata={"help": "out"})
    source: str = field(default="", metadata={"help": "input folder"})
    value: int = field(default=0, metadata={"help": "a number"})
    seed: int = field(default=0, metadata={"help": "seed"})


def make_registry(calls):
    def fn(cfg):
        calls.append(cfg.output_dir.rsplit("/", 1)[-1])
        from pathlib import Path

        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        prev = json.loads((Path(cfg.source) / "out.json").read_text())["total"] if cfg.source else 0
        (Path(cfg.output_dir) / "out.json").write_text(json.dumps({"total": prev + cfg.value}))
        return {"total": prev + cfg.value, "seed": cfg.seed}
    return {"step": (Cfg, fn)}


def write(tmp_path, a=1, b=10, c=100, extra=None):
    spec = {"output_dir": str(tmp_path / "out"), "defaults": {"seed": 7, "not_a_field_of_cfg": 1},
            "stages": [{"name": "a", "stage": "step", "with": {"value": a}},
                       {"name": "b", "stage": "step", "with": {"source": "{a}", "value": b}},
                       {"name": "c", "stage": "step", "with": {"value": c}}] + (extra or [])}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_outputs_feed_forward_and_unchanged_stages_skip(tmp_path):
    calls = []
    reg = make_registry(calls)
    summaries = run_pipeline(write(tmp_path), registry=reg)
    assert calls == ["a", "b", "c"]
    assert summaries["b"] == {"total": 11, "seed": 7}  # b read a's output; defaults reached every stage
    run_pipeline(write(tmp_path), registry=reg)
    assert calls == ["a", "b", "c"]  # nothing changed: all skipped
    run_pipeline(write(tmp_path, b=20), registry=reg)
    assert calls[3:] == ["b"]  # only b's config changed
    run_pipeline(write(tmp_path, a=2, b=20), registry=reg)
    assert calls[4:] == ["a", "b"]  # a changed: b reads a, so b reruns; c does not
    assert json.loads((tmp_path / "out" / "b" / "out.json").read_text())["total"] == 22
    run_pipeline(write(tmp_path, a=2, b=20), force=("c",), registry=reg)
    assert calls[6:] == ["c"]
    assert json.loads((tmp_path / "out" / "pipeline_summary.json").read_text())["c"]["total"] == 100


def test_a_failed_stage_is_not_marked_done(tmp_path):
    calls = []
    reg = make_registry(calls)
    boom = {"boom": (Cfg, lambda cfg: (_ for _ in ()).throw(RuntimeError("boom")))}
    path = write(tmp_path, extra=[{"name": "d", "stage": "boom"}])
    with pytest.raises(RuntimeError):
        run_pipeline(path, registry={**reg, **boom})
    assert not (tmp_path / "out" / "d" / ".rlhfkit-stage.json").exists()
    assert (tmp_path / "out" / "a" / ".rlhfkit-stage.json").exists()


@pytest.mark.parametrize("stages,match", [
    ([{"name": "a", "stage": "nope"}], "unknown stage 'nope'"),
    ([{"name": "a", "stage": "step", "with": {"source": "{zz}"}}], "'{zz}' names no earlier stage"),
    ([{"name": "a", "stage": "step", "with": {"valu": 1}}], "unknown field 'valu' \\(did you mean 'value'"),
    ([{"name": "a", "stage": "step"}, {"name": "a", "stage": "step"}], "duplicate name"),
    ([{"name": "a", "stage": "step", "with": {"value": "x"}}], "field 'value': expected an integer"),
])
def test_bad_pipelines_name_the_stage(tmp_path, stages, match):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "stages": stages}))
    with pytest.raises(ConfigError, match=match):
        run_pipeline(path, registry=make_registry([]))


def test_a_second_pipeline_on_the_same_folder_is_refused(tmp_path):
    import fcntl

    calls = []
    path = write(tmp_path)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".rlhfkit-pipeline.lock", "a+") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(ConfigError, match=r"another rlhfkit pipeline is running in this folder \(pid 4242\)"):
            run_pipeline(path, registry=make_registry(calls))
        assert calls == []
    run_pipeline(path, registry=make_registry(calls))  # released: runs
    assert calls == ["a", "b", "c"]
