"""`rlhfkit pipeline`: stages feed each other, unchanged stages are skipped, changes propagate downstream."""

import json
import re
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


@dataclass
class ListCfg(Cfg):
    earlier: list[str] = field(default_factory=list, metadata={"help": "earlier folders"})


def rounds_spec(tmp_path, n=3, template=None, start=None):
    """a -> rounds of [x from the previous round's x (round 1: a); y reading this round's x and every
    earlier round's y]."""
    spec = {"output_dir": str(tmp_path / "out"), "stages": [{"name": "a", "stage": "step", "with": {"value": 1}}],
            "rounds": n, "round": {"start": start if start is not None else {"x": "a"}, "stages": template or [
                {"name": "x", "stage": "step", "with": {"source": "{prev.x}", "value": 10}},
                {"name": "y", "stage": "list", "with": {"source": "{x}", "earlier": ["{earlier.y}"], "value": 0}}]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_rounds_expand_into_round_folders_chained_to_the_previous_round(tmp_path):
    calls, seen = [], {}
    reg = make_registry(calls)

    def list_fn(cfg):
        seen[cfg.output_dir.split("/out/")[1]] = [e.split("/out/")[1] for e in cfg.earlier]
        return reg["step"][1](cfg)

    reg["list"] = (ListCfg, list_fn)
    out = run_pipeline(rounds_spec(tmp_path), registry=reg)
    # each round's x continues from the last round's: 1, then +10 per round
    assert [out[f"round{r}/x"]["total"] for r in (1, 2, 3)] == [11, 21, 31]
    assert seen == {"round1/y": [], "round2/y": ["round1/y"], "round3/y": ["round1/y", "round2/y"]}
    assert (tmp_path / "out" / "round3" / "y" / "out.json").exists()
    calls.clear()
    assert run_pipeline(rounds_spec(tmp_path), registry=reg) == out and calls == []  # all skipped
    run_pipeline(rounds_spec(tmp_path, n=4), registry=reg)  # one more round: only it runs
    assert calls == ["x", "y"] and (tmp_path / "out" / "round4" / "x").exists()


@pytest.mark.parametrize("change, message", [
    ({"n": -1}, "'rounds' must be a whole number >= 0"),
    ({"start": {}}, "'{prev.x}' in round 1 needs 'start: {x: STAGE}'"),
    ({"template": [{"name": "x", "stage": "step", "with": {"source": "{prev.nope}"}}]},
     "'{prev.nope}' names no stage of the round template"),
])
def test_rounds_bad_template_is_one_clear_error(tmp_path, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_pipeline(rounds_spec(tmp_path, **change), registry=make_registry([]))


def test_mix_pairs_keeps_new_rows_and_the_share_of_earlier_ones(tmp_path):
    from rlhfkit.mix_pairs import MixPairsConfig, run_mix_pairs

    files = []
    for name, n in (("new", 10), ("old1", 200), ("old2", 200)):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps({"prompt": f"{name} {i}", "chosen": "a", "rejected": "b"}) + "\n"
                                     for i in range(n)))
    cfg = MixPairsConfig(data=str(files[0]), earlier=[str(f) for f in files[1:]], earlier_fraction=0.25,
                         output_dir=str(tmp_path / "mix"))
    s = run_mix_pairs(cfg)
    rows = [json.loads(x)["prompt"] for x in (tmp_path / "mix" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == s["pairs"] == 10 + s["earlier_pairs"] and len(set(rows)) == len(rows)
    assert {f"new {i}" for i in range(10)} <= set(rows)
    # binomial(400, 0.25): mean 100, sd 8.7; 60..140 is over 4.5 sd either side
    assert 60 < s["earlier_pairs"] < 140 and sum(s["earlier_per_file"].values()) == s["earlier_pairs"]
    assert run_mix_pairs(cfg) == s  # the same draw on a rerun
    cfg.earlier_fraction = 1.0
    assert run_mix_pairs(cfg)["pairs"] == 410
