"""Bad training data through the real CLI: one line on stderr, exit 2, nothing written
(``--on_bad_record error``); with the default ``skip`` bad records are dropped and counted.

Each case runs ``python -m rlhfkit STAGE --data BAD_FILE ...`` in a subprocess and checks what a
user sees: exit code 2, exactly one non-blank stderr line that names the file, the line
(``bad.jsonl:3``) and the field where there is one, no traceback, and an ``output_dir`` left as it
was (no model.safetensors, summary.json or config.yaml). The bad record sits between good ones so
a wrong line number fails.

A subprocess spends seconds importing torch and transformers, so the module fixture ``results``
starts the selected cases' processes concurrently (one per core, at most 8) and each test checks
its own result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhfkit.tiny_models import make_tiny_model_dir
from rlhfkit.world import toy

GOOD_PAIRS = [json.dumps(r) for r in toy.preference_records(3, seed=0)]
GOOD_SFT = [json.dumps(r) for r in toy.sft_records(3, seed=0)]
PAIR = {"prompt": "how is the tea ?", "chosen": "the tea is warm and sweet .", "rejected": "the tea is cold and sour ."}
SFT = {"prompt": "how is the tea ?", "completion": "the tea is warm and sweet ."}
MISSING = object()  # a file that is never created


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    content: object  # bytes written to the data file, or MISSING
    line: int | None  # expected 'name.jsonl:<line>' in the error
    field: str | None  # expected "field '<field>'" in the error
    message: str  # expected fragment of the error message
    debug: bool = False

    @property
    def name(self) -> str:
        return f"{self.id}.jsonl"


def lines(good: list[str], at: int, bad: str | bytes) -> bytes:
    """The good lines with `bad` put at 1-based line `at`."""
    rows = [r.encode() for r in good]
    rows.insert(at - 1, bad if isinstance(bad, bytes) else bad.encode())
    return b"\n".join(rows) + b"\n"


def pair(**changes) -> str:
    return json.dumps({k: v for k, v in {**PAIR, **changes}.items() if v is not MISSING})


def pref_cases(stage: str) -> list[Case]:
    g = GOOD_PAIRS
    return [
        Case(f"{stage}-empty-file", stage, b"", None, None, "empty: no records"),
        Case(f"{stage}-missing-field", stage, lines(g, 2, pair(rejected=MISSING)), 2, "rejected", "missing"),
        Case(f"{stage}-mistyped-field", stage, lines(g, 3, pair(chosen=5)), 3, "chosen",
             "expected a string or a list of messages, got number"),
        Case(f"{stage}-identical", stage, lines(g, 2, pair(rejected=PAIR["chosen"])), 2, "rejected",
             "identical to 'chosen'"),
        Case(f"{stage}-empty-string", stage, lines(g, 4, pair(prompt="")), 4, "prompt", "empty string"),
        Case(f"{stage}-bad-json", stage, lines(g, 3, '{"prompt": "how is the tea ?", "chosen": '), 3, None,
             "invalid JSON"),
        Case(f"{stage}-bad-utf8", stage, lines(g, 2, b'{"prompt": "how is the \xff ?", "chosen": "a", "rejected": "b"}'),
             2, None, "invalid UTF-8 (byte 0xff"),
        Case(f"{stage}-not-object", stage, lines(g, 2, '["how is the tea ?", "good", "bad"]'), 2, None,
             "expected a JSON object, got list"),
        Case(f"{stage}-no-such-file", stage, MISSING, None, None, "no such file"),
    ]


def sft(**changes) -> str:
    return json.dumps({k: v for k, v in {**SFT, **changes}.items() if v is not MISSING})


ALL_DPO = pref_cases("dpo")
SOME_RM = [c for c in pref_cases("rm") if c.id.split("-", 1)[1] in ("identical", "bad-utf8")]
SOME_SFT = [
    Case("sft-missing-field", "sft", lines(GOOD_SFT, 2, sft(completion=MISSING)), 2, "completion", "missing"),
    Case("sft-mistyped-field", "sft", lines(GOOD_SFT, 3, sft(completion=5)), 3, "completion",
         "expected a string or a list of messages, got number"),
    Case("sft-not-object", "sft", lines(GOOD_SFT, 1, '"how is the tea ?"'), 1, None,
         "expected a JSON object, got string"),
]
CASES = ALL_DPO + SOME_RM + SOME_SFT
DEBUG_CASE = Case("dpo-debug", "dpo", lines(GOOD_PAIRS, 3, pair(chosen=5)), 3, "chosen",
                  "expected a string or a list of messages, got number", debug=True)


@dataclass
class Result:
    case: Case
    data: Path
    out: Path
    before: dict
    returncode: int
    stderr: str


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", toy.vocabulary_texts())


def run_case(case: Case, root: Path, model: str) -> Result:
    folder = root / case.id
    folder.mkdir()
    data = folder / case.name
    if case.content is not MISSING:
        data.write_bytes(case.content)
    out = folder / "out"
    out.mkdir()
    (out / "notes.txt").write_text("written before the run\n")
    before = snapshot(out)
    cmd = [sys.executable, "-m", "rlhfkit", case.stage, "--model", model, "--data", str(data),
           "--output_dir", str(out), "--max_steps", "2", "--batch_size", "2", "--on_bad_record", "error"]
    cmd += ["--debug"] if case.debug else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return Result(case, data, out, before, proc.returncode, proc.stderr)


@pytest.fixture(scope="module")
def results(request, tiny_model_dir, tmp_path_factory) -> dict[str, Result]:
    """Run every selected case of this module at once; {case id: Result}."""
    wanted = [item.callspec.params["case"] for item in request.session.items
              if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    root = tmp_path_factory.mktemp("cli")
    workers = max(1, min(os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda c: run_case(c, root, tiny_model_dir), wanted)
        return {r.case.id: r for r in done}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(case, results):
    r = results[case.id]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    msg = error_lines(r.stderr)
    assert len(msg) == 1, r.stderr
    line = msg[0]
    assert line.startswith(f"rlhfkit {case.stage}: error: {r.data}"), line
    where = f"{case.name}:{case.line}:" if case.line is not None else f"{case.name}: "
    assert where in line, line
    if case.field is not None:
        assert f"field '{case.field}'" in line, line
    else:
        assert "field '" not in line, line
    assert case.message in line, line
    assert snapshot(r.out) == r.before  # no model.safetensors, summary.json, config.yaml, checkpoints


@pytest.mark.parametrize("case", [DEBUG_CASE], ids=lambda c: c.id)
def test_debug_shows_the_traceback_then_the_same_line(case, results):
    r = results[case.id]
    assert r.returncode == 2, r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert "rlhfkit.data.errors.DataError" in r.stderr
    expected = f"rlhfkit dpo: error: {r.data}:3: field 'chosen': {case.message}"
    assert error_lines(r.stderr)[-1] == expected
    assert snapshot(r.out) == r.before


def test_online_stage_refuses_bad_prompts_in_one_line(world_dir, tmp_path):
    """`rlhfkit grpo` validates its prompt file like the offline stages: one line, file:line, field."""
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "how is the soup ?"}\n{"prompt": ""}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "rlhfkit", "grpo", "--model", world_dir["base"], "--data", str(bad),
                           "--output_dir", str(tmp_path / "out"), "--reward_fn", "rlhfkit.world.toy:kind_reward",
                           "--on_bad_record", "error"],
                          capture_output=True, text=True, timeout=120)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "prompts.jsonl:2" in lines[0] and "field 'prompt'" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()



def test_default_skips_bad_records_and_reads_the_test_split(tiny_model_dir, tmp_path):
    """Default on_bad_record (skip): an identical pair (as hh-rlhf has) is dropped, counted and named
    in summary.json; `eval_data` given the same DatasetDict folder evaluates on its 'test' split."""
    import datasets

    rows = [json.loads(r) for r in GOOD_PAIRS] + [{**PAIR, "rejected": PAIR["chosen"]}] + [PAIR]
    folder = tmp_path / "prefs"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list([PAIR, json.loads(GOOD_PAIRS[0])])}).save_to_disk(str(folder))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlhfkit", "rm", "--model", tiny_model_dir, "--data", str(folder), "--eval_data",
           str(folder), "--output_dir", str(out), "--max_steps", "1", "--batch_size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_pairs"] == 2 and summary["num_pairs"] == 4
    assert summary["bad_records"] == 1
    assert summary["bad_record_examples"] == [f"{folder} (split 'train'): record 4: field 'rejected': identical to 'chosen'"]
    assert (summary["data_split"], summary["eval_split"]) == ("train", "test")
    log = proc.stdout + proc.stderr
    assert f"data: {folder} split 'train': 5 rows, 1 bad record skipped (on_bad_record: skip)" in log
    assert f"eval_data: {folder} split 'test': 2 rows" in log


def test_online_stage_skips_bad_prompts_by_default(world_dir, tmp_path):
    """grpo with the default on_bad_record: the empty prompt is dropped and counted in summary.json."""
    from rlhfkit.train.grpo import GRPOConfig
    from rlhfkit.train.grpo import run_grpo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "how is the soup ?"}\n{"prompt": ""}\n{"prompt": "how is the tea ?"}\n',
                       encoding="utf-8")
    out = tmp_path / "out"
    run_grpo(GRPOConfig(model=world_dir["base"], data=str(prompts), output_dir=str(out), max_steps=1, batch_size=2,
                        num_generations=2, max_new_tokens=4, reward_fn=["rlhfkit.world.toy:kind_reward"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_records"] == 1 and summary["data_split"] is None
    assert summary["bad_record_examples"] == [f"{prompts}:2: field 'prompt': empty string"]


# ------------------------------------------------------------------ models that are not there (issue #17, 9a, 9d)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def missing_model_runs(tmp_path_factory) -> dict[str, tuple[str, subprocess.CompletedProcess]]:
    """`--model` spelt wrong, as a relative folder, ./folder, an absolute folder and a bare name (hub offline):
    {case: (the path given, the finished process)}, run concurrently."""
    root = tmp_path_factory.mktemp("nomodel")
    (root / "models").mkdir()
    data = root / "prefs.jsonl"
    data.write_text("\n".join(GOOD_PAIRS) + "\n", encoding="utf-8")
    cases = {"relative": ("sft", "models/nope"), "dot": ("dpo", "./nope"), "absolute": ("rm", str(root / "abs" / "nope")),
             "bare_offline": ("dpo", "nope-model")}

    def go(item):
        case, (stage, model) = item
        data_file = root / "sft.jsonl" if stage == "sft" else data
        if stage == "sft":
            data_file.write_text("\n".join(GOOD_SFT) + "\n", encoding="utf-8")
        return case, (model, _cli([stage, "--model", model, "--data", str(data_file), "--output_dir",
                                   str(root / f"out_{case}"), "--max_steps", "1", "--batch_size", "2"], root))

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(go, cases.items()))


@pytest.mark.parametrize("which", ["relative", "dot", "absolute", "bare_offline"])
def test_missing_model_folder_is_named_in_one_line(which, missing_model_runs):
    model, proc = missing_model_runs[which]
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"field 'model': no folder '{model}'" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    if which == "bare_offline":
        assert "HF_HUB_OFFLINE" in lines[0]


def test_chat_data_without_chat_template_is_refused_before_weights_load(tmp_path, tiny_model_dir):
    """Conversational records and a tokenizer without a chat template: one line naming the model folder
    and the data file. The copy's weights file is removed, so an error raised only after the weights
    load (as before) would be about the weights instead."""
    import shutil

    model = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    for name in ("chat_template.jinja", "chat_template.json"):
        (model / name).unlink(missing_ok=True)
    cfg_path = model / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "how is the tea ?"},
                                             {"role": "assistant", "content": "the tea is warm ."}]}) + "\n",
                    encoding="utf-8")
    proc = _cli(["sft", "--model", str(model), "--data", str(data), "--output_dir", str(tmp_path / "out"),
                 "--max_steps", "1", "--batch_size", "1"], tmp_path)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(data) in lines[0] and f"'{model}'" in lines[0] and "chat template" in lines[0], lines[0]
