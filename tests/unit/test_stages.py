"""The stage registry: every entry loads, the usage text and docs/configuration.md come from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhfkit.stages import STAGES, configuration_markdown, find, registry, usage

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_docs_are_generated_from_the_code():
    assert DOCS.read_text(encoding="utf-8") == configuration_markdown(), \
        "docs/configuration.md is stale: regenerate it with `python -m rlhfkit.stages docs`"


def test_every_stage_loads_a_config_dataclass_and_a_run_function():
    loaded = [s for s in STAGES if s.module]
    assert len(loaded) == 25
    for s in loaded:
        cls, run = s.load()
        assert dataclasses.is_dataclass(cls) and callable(run), s.name
        assert getattr(cls, "stage", s.name) == s.name, (s.name, cls.stage)  # the TRL-name stage matches
    assert len({s.name for s in STAGES}) == len(STAGES)


def test_pipeline_registry_leaves_out_long_running_and_own_cli_stages():
    names = set(registry())
    assert {"sft", "rm", "dpo", "ppo", "noise", "gold-eval", "world-base"} <= names
    assert not names & {"serve", "demo", "lab", "annotate", "pipeline"}
    cls, run = registry()["rm"]
    assert (cls.__name__, run.__name__) == ("RMConfig", "run_rm")


def test_usage_names_every_stage_once_with_its_summary():
    text = usage()
    for s in STAGES:
        label = s.usage or s.name
        assert text.count(f"\n  {label} ") == 1, label
    assert find("lab").usage == "lab LEVER" and find("nope") is None


def test_docs_list_a_stage_override_and_each_shared_group_once():
    text = configuration_markdown()
    rm = text.split("## `rlhfkit rm`", 1)[1].split("\n## ", 1)[0]
    assert "| `learning_rate` | float | `0.0001` |" in rm  # RM's own default, not TrainConfig's 5e-05
    assert "[TrainConfig](#trainconfig)" in rm
    assert text.count("\n### TrainConfig\n") == 1
    assert "| `max_new_tokens` | int | `32` |" in text.split("## `rlhfkit gold-eval`", 1)[1].split("\n## ", 1)[0]
