"""benchmarks/demo_time.py --seed: the training seed moves, the world and the evaluation do not."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("demo_time", ROOT / "benchmarks" / "demo_time.py")
demo_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_time)


def test_seeded_pipeline_pins_the_world_and_the_evaluation(tmp_path):
    from rlhfkit.pipeline import load_pipeline

    source = ROOT / "src" / "rlhfkit" / "configs" / "demo.yaml"
    out = load_pipeline(demo_time.seeded_pipeline(source, 7, tmp_path / "demo.yaml"))
    original = load_pipeline(source)
    assert out["defaults"] == {**original["defaults"], "seed": 7}
    kinds = {st["name"]: st for st in out["stages"]}
    assert [st["name"] for st in out["stages"]] == [st["name"] for st in original["stages"]]
    for name, st in kinds.items():
        pinned = st["stage"] in ("world-base", "world-data", "gold-eval")
        assert (st.get("with", {}).get("seed") == 0) == pinned, name
    assert any(name.startswith("round1/") and st["stage"] == "gold-eval" for name, st in kinds.items())
    # Everything else is unchanged.
    strip = [{**st, "with": {k: v for k, v in (st.get("with") or {}).items() if k != "seed"}} for st in out["stages"]]
    assert strip == [{**st, "with": st.get("with") or {}} for st in original["stages"]]
    assert yaml.safe_load((tmp_path / "demo.yaml").read_text()).get("rounds") == yaml.safe_load(source.read_text()).get("rounds")
