"""parse_config: YAML file, then command-line overrides, then validation; --help; the bare CLI.

Every test checks the exact field values or the exact parts of the error message (file, field,
suggestion) a user reads, so a parser that drops a YAML value, lets YAML win over the command line,
or reports an error without saying where fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from rlhfkit.cli import USAGE
from rlhfkit.config import ConfigError, dump_config
from rlhfkit.parser import parse_config
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.sft import SFTConfig

REQUIRED = "model: base\ndata: prefs.jsonl\noutput_dir: out\n"


def write(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def parse(*argv: str, cls=DPOConfig):
    return parse_config(cls, list(argv))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # COLUMNS: one help entry per line, so a long default is never wrapped mid-value.
    env = {**os.environ, "COLUMNS": "400", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def defaults(cls) -> dict:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------ YAML + overrides


def test_yaml_sets_fields_cli_overrides_and_the_rest_keep_defaults(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "beta: 0.5\nmax_steps: 7\nloss_type: ipo\nlearning_rate: 1e-5\n")
    cfg = parse("--config", cfg_file, "--beta", "0.3")
    assert cfg.beta == 0.3  # command line beats YAML
    assert (cfg.model, cfg.data, cfg.output_dir) == ("base", "prefs.jsonl", "out")
    assert cfg.max_steps == 7 and cfg.loss_type == "ipo"
    # YAML 1.1 reads `1e-5` (no dot) as a string; it must still arrive as the float 1e-5.
    assert cfg.learning_rate == 1e-5 and isinstance(cfg.learning_rate, float)
    set_here = {"beta", "model", "data", "output_dir", "max_steps", "loss_type", "learning_rate"}
    expected = {k: v for k, v in defaults(DPOConfig).items() if k not in set_here}
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert expected["batch_size"] == 16 and expected["label_smoothing"] == 0.0  # the defaults really checked


def test_yaml_float_field_given_an_int_becomes_a_float(tmp_path):
    cfg = parse("--config", write(tmp_path, REQUIRED + "beta: 1\n"))
    assert cfg.beta == 1.0 and isinstance(cfg.beta, float)


def test_command_line_alone_sets_required_fields():
    cfg = parse("--model", "m", "--data", "d.jsonl", "--output_dir", "o", "--max_steps", "3")
    assert (cfg.model, cfg.data, cfg.output_dir, cfg.max_steps, cfg.beta) == ("m", "d.jsonl", "o", 3, 0.1)


@pytest.mark.parametrize("argv, expected", [
    (["--resume"], {"resume": True, "precompute_ref": False}),
    (["--precompute_ref", "true"], {"resume": False, "precompute_ref": True}),
    (["--resume", "false", "--precompute_ref", "yes"], {"resume": False, "precompute_ref": True}),
    (["--report_to", "tensorboard"], {"report_to": ["tensorboard"]}),
    (["--report_to", "tensorboard", "mlflow"], {"report_to": ["tensorboard", "mlflow"]}),
])
def test_bool_and_list_flags(tmp_path, argv, expected):
    cfg = parse("--config", write(tmp_path, REQUIRED), *argv)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_yaml_bools_and_lists_and_cli_override_them(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "resume: true\nreport_to: [tensorboard, wandb]\n")
    cfg = parse("--config", cfg_file)
    assert (cfg.resume, cfg.report_to) == (True, ["tensorboard", "wandb"])
    cfg = parse("--config", cfg_file, "--resume", "false", "--report_to", "mlflow")
    assert (cfg.resume, cfg.report_to) == (False, ["mlflow"])


def test_yaml_single_sink_string_means_a_list_of_one(tmp_path):
    assert parse("--config", write(tmp_path, REQUIRED + "report_to: tensorboard\n")).report_to == ["tensorboard"]


def test_sft_negative_bool_flag():
    cfg = parse("--model", "m", "--data", "d", "--output_dir", "o", "--no_completion_only_loss", cls=SFTConfig)
    assert cfg.completion_only_loss is False
    assert parse("--model", "m", "--data", "d", "--output_dir", "o", cls=SFTConfig).completion_only_loss is True


# ------------------------------------------------------------------ errors


def test_unknown_yaml_field_names_file_field_and_suggests_spelling(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "learning_rat: 0.001\n", name="typo.yaml")
    with pytest.raises(ConfigError) as e:
        parse("--config", cfg_file)
    assert str(e.value) == f"{cfg_file}: unknown field 'learning_rat' (did you mean 'learning_rate'?)"


def test_unknown_yaml_field_without_a_close_spelling_has_no_suggestion(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "zzzz: 1\n")
    with pytest.raises(ConfigError) as e:
        parse("--config", cfg_file)
    assert str(e.value) == f"{cfg_file}: unknown field 'zzzz'"


def test_trl_batch_name_is_mapped_not_answered_with_eval_batch_size(tmp_path):
    """Issue #17 defect 9c: `per_device_train_batch_size` was refused with "did you mean
    'eval_batch_size'?"; it is TRL's name for the per-process micro-batch."""
    cfg = parse("--config", write(tmp_path, REQUIRED + "per_device_train_batch_size: 4\n"))
    assert (cfg.batch_size, cfg.micro_batch_size) == (4, 4)


def test_misspelt_trl_name_suggests_the_trl_name(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "per_device_train_batch_sz: 4\n")
    with pytest.raises(ConfigError) as e:
        parse("--config", cfg_file)
    assert str(e.value) == (f"{cfg_file}: unknown field 'per_device_train_batch_sz' "
                            "(did you mean 'per_device_train_batch_size'?)")


@pytest.mark.parametrize("text", ["report_to: none\n", "report_to: [none]\n", "report_to: None\n"])
def test_report_to_none_means_no_extra_sinks(tmp_path, text):
    """Defect 9b: TRL's and transformers' default `report_to: none` was 'unknown sink'."""
    assert parse("--config", write(tmp_path, REQUIRED + text)).report_to == []


def test_report_to_none_on_the_command_line():
    assert parse("--model", "m", "--data", "d", "--output_dir", "o", "--report_to", "none").report_to == []


@pytest.mark.parametrize("text,message", [
    ("report_to: all\n", "field 'report_to': 'all' is not supported: name the sinks you want (tensorboard, wandb, "
                         "mlflow), or none"),
    ("report_to: [none, wandb]\n", "field 'report_to': unknown sink 'none' (tensorboard, wandb, mlflow, or none)"),
])
def test_report_to_all_or_none_among_sinks_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        parse("--config", write(tmp_path, REQUIRED + text))
    assert str(e.value) == f"config: {message}"


def test_invalid_yaml_names_the_file(tmp_path):
    cfg_file = write(tmp_path, "model: [base\n", name="broken.yaml")
    with pytest.raises(ConfigError, match=r"^.*broken\.yaml: not valid YAML: ") as e:
        parse("--config", cfg_file)
    assert str(e.value).startswith(f"{cfg_file}: not valid YAML: ")


@pytest.mark.parametrize("text, kind", [("- model\n- data\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_non_mapping_yaml_names_the_file(tmp_path, text, kind):
    cfg_file = write(tmp_path, text, name="list.yaml")
    with pytest.raises(ConfigError) as e:
        parse("--config", cfg_file)
    assert str(e.value) == f"{cfg_file}: expected a mapping of field: value, got {kind}"


def test_missing_config_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as e:
        parse("--config", missing)
    assert str(e.value) == f"{missing}: no such config file"


@pytest.mark.parametrize("line, message", [
    ("loss_type: bogus", "field 'loss_type': 'bogus' is not one of sigmoid, ipo, robust, hinge"),
    ("max_steps: 2.5", "field 'max_steps': expected an integer, got 2.5"),
    ("max_steps: abc", "field 'max_steps': expected an integer, got 'abc'"),
    ("beta: null", "field 'beta': expected a number, got None"),
    ("beta: high", "field 'beta': expected a number, got 'high'"),
    ("resume: maybe", "field 'resume': expected true or false, got 'maybe'"),
    ("ref_model: 5", "field 'ref_model': expected a string, got 5"),
    ("report_to: {a: 1}", "field 'report_to': expected a list of strings, got {'a': 1}"),
])
def test_yaml_value_of_the_wrong_type_or_choice_names_file_and_field(tmp_path, line, message):
    cfg_file = write(tmp_path, REQUIRED + line + "\n")
    with pytest.raises(ConfigError) as e:
        parse("--config", cfg_file)
    assert str(e.value) == f"{cfg_file}: {message}"


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--learning_rat", "0.1"], ["--max", "3"]])
def test_unknown_command_line_flag(tmp_path, argv):
    """Prefixes are not accepted as abbreviations: `--learning_rat` must not set learning_rate."""
    with pytest.raises(ConfigError) as e:
        parse("--config", write(tmp_path, REQUIRED), *argv)
    assert str(e.value) == f"unknown command-line arguments: {' '.join(argv)} (see --help)"


def test_missing_required_model():
    with pytest.raises(ConfigError) as e:
        parse("--data", "d.jsonl", "--output_dir", "o")
    assert str(e.value) == "config: field 'model' is required (set it in the YAML file or with --model)"


def test_loss_type_outside_choices_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--model", "m", "--data", "d", "--output_dir", "o", "--loss_type", "bogus")
    assert e.value.code == 2
    assert "argument --loss_type/--loss-type: invalid choice: 'bogus'" in capsys.readouterr().err


def test_validate_rejects_a_bad_choice_set_in_code():
    from rlhfkit.config import validate

    with pytest.raises(ConfigError) as e:
        validate(DPOConfig(model="m", data="d", output_dir="o", dtype="fp8"))
    assert str(e.value) == "config: field 'dtype': 'fp8' is not one of auto, float32, bfloat16, float16"


def test_an_args_file_beside_the_program_is_ignored(tmp_path, monkeypatch):
    """HfArgumentParser would read '<argv[0]>.args' and add its flags; a config must come from --config."""
    (tmp_path / "prog.args").write_text("--beta 0.7\n")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "prog.py")])
    assert parse("--model", "m", "--data", "d", "--output_dir", "o").beta == 0.1


# ------------------------------------------------------------------ dump + reload


def test_dump_then_load_round_trips(tmp_path):
    cfg_file = write(tmp_path, REQUIRED + "loss_type: robust\nlabel_smoothing: 0.2\n")
    cfg = parse("--config", cfg_file, "--beta", "0.25", "--resume", "--report_to", "tensorboard", "wandb",
                "--learning_rate", "3e-4", "--max_steps", "11", "--dtype", "float32")
    dumped = tmp_path / "dumped.yaml"
    dump_config(cfg, dumped)
    again = parse("--config", str(dumped))
    assert again == cfg
    assert (again.beta, again.resume, again.report_to, again.loss_type, again.label_smoothing,
            again.learning_rate, again.max_steps) == (0.25, True, ["tensorboard", "wandb"], "robust", 0.2, 3e-4, 11)


# ------------------------------------------------------------------ the CLI itself


def help_entries(text: str) -> dict[str, str]:
    """{'--flag': its help text on one line} from argparse's options section."""
    entries, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):  # a new option: '  --name VALUE, --name-alias VALUE   help...'
            invocation, _, rest = line.strip().partition("  ")
            current = [rest.strip()]
            for flag in re.findall(r"--[\w-]+", invocation):
                entries[flag] = current
        elif current is not None and line.strip():
            current.append(line.strip())
    return {flag: " ".join(p for p in parts if p) for flag, parts in entries.items()}


def test_help_lists_every_field_with_its_default():
    proc = run_cli("dpo", "--help")
    assert proc.returncode == 0, proc.stderr
    entries = help_entries(proc.stdout)
    fields = dataclasses.fields(DPOConfig)
    assert len(fields) >= 30  # the loop below is not vacuous
    for f in fields:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert f"--{f.name}" in entries, f.name
        assert entries[f"--{f.name}"].endswith(f"(default: {default})"), (f.name, entries[f"--{f.name}"])
        assert entries[f"--{f.name}"].startswith(f.metadata["help"].split()[0]), f.name
    assert entries["--beta"] == "Strength of the implicit KL to the reference (DPO's beta). (default: 0.1)"
    assert entries["--learning_rate"].endswith("(default: 1e-06)")  # DPO's own default, not the base's 5e-05


def test_no_arguments_prints_usage_and_exits_2():
    proc = run_cli()
    assert proc.returncode == 2
    assert proc.stderr.strip() == USAGE
    assert proc.stdout == ""
    for stage in ("sft", "rm", "dpo", "demo"):
        assert re.search(rf"^  {stage} +\S", USAGE, re.M), stage


def test_help_flag_prints_usage_to_stdout_and_exits_0():
    proc = run_cli("--help")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, USAGE, "")


def test_unknown_stage_exits_2():
    proc = run_cli("ppo-typo")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "rlhfkit: error: unknown stage 'ppo-typo'"
    assert USAGE in proc.stderr
    assert "Traceback" not in proc.stderr
