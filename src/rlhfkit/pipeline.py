"""``rlhfkit pipeline --config FILE``: run stages listed in YAML, each stage's output feeding the next.

    output_dir: runs/mine
    defaults: {seed: 0}              # optional: set in every stage whose config has the field
    stages:
      - name: sft                    # output goes to <output_dir>/sft
        stage: sft                   # any stage: sft rm dpo ppo rloo grpo best-of-n sample-pairs ...
        with: {model: Qwen/Qwen2.5-0.5B, data: sft.jsonl, max_steps: 500}
      - name: dpo
        stage: dpo
        with: {model: "{sft}", data: prefs.jsonl}    # "{sft}" is the sft stage's output folder

Iterated rounds (Llama 2 ran five: each samples fresh pairs from the latest policy, so the reward
model sees what the policy now writes): ``rounds: N`` repeats the ``round`` template N times after
``stages``, round r's stage NAME writing to ``<output_dir>/round<r>/NAME`` (``{round<r>/NAME}``).
Inside the template ``{NAME}`` is this round's stage, ``{prev.NAME}`` the previous round's (in round
1, the earlier stage that ``start`` maps NAME to), and a list item holding ``{earlier.NAME}`` becomes
one item per earlier round (none in round 1):

    rounds: 3
    round:
      start: {policy: sft, rm: rm}
      stages:
        - {name: pairs, stage: sample-pairs, with: {model: "{prev.policy}", data: prompts.jsonl}}
        - {name: labels, stage: collect, with: {data: "{pairs}/pairs.jsonl", server: "http://127.0.0.1:8000"}}
        - {name: rm, stage: rm, with: {model: "{prev.rm}", data: "{labels}/train.jsonl"}}
        - {name: policy, stage: ppo, with: {model: "{prev.policy}", ref_model: "{sft}", reward_model: "{rm}"}}

A stage is skipped when its output folder holds a completion marker whose fingerprint matches:
the fingerprint covers the stage's resolved config and the runs of the stages it reads from, so
changing a config or rerunning an upstream stage reruns everything downstream, and nothing else.
``--force NAME`` reruns a stage regardless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from .config import ConfigError
from .config_yaml import from_mapping, load_yaml_file

MARKER = ".rlhfkit-stage.json"
LOCK = ".rlhfkit-pipeline.lock"
_REF = re.compile(r"\{([A-Za-z0-9_.\-/]+)\}")
_ROUND_REF = re.compile(r"\{(?:(prev|earlier)\.)?([A-Za-z0-9_.\-/]+)\}")


def load_pipeline(path: str | Path) -> dict:
    path = Path(path)
    spec = load_yaml_file(path, "pipeline file")
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty list 'stages'")
    unknown = set(spec) - {"output_dir", "defaults", "stages", "rounds", "round"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (output_dir, defaults, stages, rounds, round)")
    spec = {**spec, "stages": spec["stages"] + expand_rounds(spec, path)}
    names = set()
    for i, st in enumerate(spec["stages"], 1):
        if not isinstance(st, dict) or not {"name", "stage"} <= set(st) or set(st) - {"name", "stage", "with"}:
            raise ConfigError(f"{path}: stage {i}: expected keys name, stage and optional with")
        if st["name"] in names:
            raise ConfigError(f"{path}: stage {i}: duplicate name {st['name']!r}")
        names.add(st["name"])
    return spec


def expand_rounds(spec: dict, path) -> list[dict]:
    """The stages of ``rounds: N`` x the ``round`` template, references rewritten to concrete names."""
    n, template = spec.get("rounds", 0), spec.get("round")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{path}: 'rounds' must be a whole number >= 0, got {n!r}")
    if template is None:
        if n:
            raise ConfigError(f"{path}: 'rounds: {n}' needs a 'round' template (start, stages)")
        return []
    if (not isinstance(template, dict) or set(template) - {"start", "stages"} or not isinstance(template.get("stages"), list)
            or not template["stages"] or not isinstance(template.get("start") or {}, dict)):
        raise ConfigError(f"{path}: 'round' must be a mapping with a non-empty list 'stages' and optional 'start'")
    start = template.get("start") or {}
    local = {st.get("name") for st in template["stages"] if isinstance(st, dict)}
    out = []
    for r in range(1, n + 1):
        def rewrite(value, where):
            if isinstance(value, list):
                items = []
                for v in value:
                    if isinstance(v, str) and "{earlier." in v:
                        items += [_round_ref(v, k, start, local, where) for k in range(1, r)]
                    else:
                        items.append(rewrite(v, where))
                return items
            return _round_ref(value, r, start, local, where) if isinstance(value, str) else value

        for st in template["stages"]:
            if not isinstance(st, dict) or "name" not in st:
                raise ConfigError(f"{path}: round stage {st!r}: expected keys name, stage and optional with")
            where = f"{path}: round {r} stage {st['name']!r}"
            out.append({**st, "name": f"round{r}/{st['name']}",
                        **({"with": {k: rewrite(v, where) for k, v in st["with"].items()}} if st.get("with") else {})})
    return out


def _round_ref(text: str, r: int, start: dict, local: set, where: str) -> str:
    """``{NAME}`` -> ``{round<r>/NAME}`` for the template's own stages; ``{prev.NAME}`` and
    ``{earlier.NAME}`` -> round r-1's (round 0: ``start[NAME]``)."""
    def sub(m):
        name = m.group(2)
        if not m.group(1):  # {NAME}: this round's stage, or an earlier stage of the pipeline
            return f"{{round{r}/{name}}}" if name in local else m.group(0)
        if name not in local:
            raise ConfigError(f"{where}: '{m.group(0)}' names no stage of the round template")
        if r > 1 or m.group(1) == "earlier":
            return f"{{round{r - 1 if m.group(1) == 'prev' else r}/{name}}}"
        if name not in start:
            raise ConfigError(f"{where}: '{m.group(0)}' in round 1 needs 'start: {{{name}: STAGE}}' in 'round'")
        return f"{{{start[name]}}}"

    return _ROUND_REF.sub(sub, text)


def _resolve(value, outputs: dict[str, str], where: str, used: set):
    """Replace ``{name}`` in strings by that earlier stage's output folder."""
    if isinstance(value, list):
        return [_resolve(v, outputs, where, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(1) not in outputs:
            raise ConfigError(f"{where}: '{{{m.group(1)}}}' names no earlier stage (known: {', '.join(outputs)})")
        used.add(m.group(1))
        return outputs[m.group(1)]

    return _REF.sub(sub, value)


def _fingerprint(cfg, upstream: list[str]) -> str:
    blob = json.dumps({"config": dataclasses.asdict(cfg), "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done(out: Path, fingerprint: str) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return marker if marker.get("fingerprint") == fingerprint else None


def run_pipeline(path: str | Path, output_dir: str | None = None, force: tuple[str, ...] = (),
                 registry: Mapping[str, tuple[type, Callable]] | None = None) -> dict:
    """Run (or skip) every stage in order; returns {stage name: summary}."""
    from .stages import registry as default_registry

    spec = load_pipeline(path)
    stages = registry or default_registry()
    root = Path(output_dir or spec.get("output_dir") or "runs/pipeline")
    with folder_lock(root):
        return _run_stages(path, spec, stages, root, force)


@contextlib.contextmanager
def folder_lock(root: Path):
    """One pipeline per output folder: two at once would run the same stage into the same folder."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(root / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ConfigError(f"{root}: another rlhfkit pipeline is running in this folder (pid "
                              f"{f.read().strip() or '?'}); wait for it to finish or use another output_dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_stages(path, spec: dict, stages: dict, root: Path, force: tuple[str, ...]) -> dict:
    from .resources import set_cpu_threads

    outputs, run_ids, summaries = {}, {}, {}
    for st in spec["stages"]:
        name, kind, where = st["name"], st["stage"], f"{path}: stage {st['name']!r}"
        if kind not in stages:
            raise ConfigError(f"{where}: unknown stage {kind!r} (known: {', '.join(sorted(stages))})")
        cls, fn = stages[kind]
        out = root / name
        used: set = set()
        fields = {k: v for k, v in (spec.get("defaults") or {}).items() if k in {f.name for f in dataclasses.fields(cls)}}
        fields.update({k: _resolve(v, outputs, where, used) for k, v in (st.get("with") or {}).items()})
        cfg = from_mapping(cls, {**fields, "output_dir": str(out)}, where)
        fingerprint = _fingerprint(cfg, [run_ids[u] for u in sorted(used)])
        marker = None if name in force else _done(out, fingerprint)
        if marker:
            print(f"[rlhfkit pipeline] {name}: unchanged, skipped ({out})")
        else:
            print(f"[rlhfkit pipeline] {name}: running {kind} -> {out}")
            (out / MARKER).unlink(missing_ok=True)
            set_cpu_threads(lambda m: print(f"[rlhfkit pipeline] {name}: {m}", flush=True))  # cores free now
            t0 = time.perf_counter()
            summary = fn(cfg)
            marker = {"fingerprint": fingerprint, "run_id": uuid.uuid4().hex, "stage": kind,
                      "seconds": round(time.perf_counter() - t0, 3), "summary": summary}
            out.mkdir(parents=True, exist_ok=True)
            (out / MARKER).write_text(json.dumps(marker, indent=2, default=str))
        outputs[name], run_ids[name], summaries[name] = str(out), marker["run_id"], marker["summary"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline_summary.json").write_text(json.dumps(summaries, indent=2, default=str))
    return summaries
