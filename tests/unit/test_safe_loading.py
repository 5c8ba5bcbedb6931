"""Safe loading: safetensors by default, pickle weights refused unless allow_pickle, trust_remote_code
off unless set, YAML only through safe_load, torch.load only with weights_only=True."""

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlhfkit
from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.parser import parse_config
from rlhfkit.train.sft import SFTConfig
from rlhfkit.models import load_reward_model, load_tokenizer

SRC = Path(rlhfkit.__file__).parent


@pytest.fixture
def pickled_dir(world_dir, tmp_path):
    """The tiny base model with its weights as a pickle (pytorch_model.bin) and no safetensors file."""
    folder = tmp_path / "pickled"
    shutil.copytree(world_dir["base"], folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("stage,data", [("sft", "sft"), ("rm", "prefs")])  # causal LM and reward-model loaders
def test_cli_refuses_pickle_weights_in_one_line_unless_allowed(world_dir, pickled_dir, tmp_path, capsys, stage, data):
    args = [stage, "--model", str(pickled_dir), "--data", world_dir[data], "--max_steps", "1", "--batch_size", "4",
            "--max_length", "32"]
    rc = main([*args, "--output_dir", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert f"{pickled_dir}: has only pickle weights (pytorch_model.bin)" in line and "allow_pickle: true" in line
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    rc = main([*args, "--output_dir", str(tmp_path / "allowed"), "--allow_pickle", "true"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "allowed" / "model.safetensors").exists()  # and what it writes is safetensors again
    assert not list((tmp_path / "allowed").glob("*.bin"))


def test_reward_model_loader_refuses_pickle(pickled_dir):
    tok = load_tokenizer(str(pickled_dir))
    with pytest.raises(OSError, match="only pickle weights"):
        load_reward_model(str(pickled_dir), tok)
    assert load_reward_model(str(pickled_dir), tok, allow_pickle=True).config.num_labels == 1


def _modules():
    for info in pkgutil.walk_packages(rlhfkit.__path__, "rlhfkit."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        yield importlib.import_module(info.name)


def test_trust_remote_code_and_allow_pickle_default_to_false_everywhere():
    """Every config field and every function or class parameter of these names defaults to False."""
    checked = []
    for module in _modules():
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if dataclasses.is_dataclass(obj):
                for f in dataclasses.fields(obj):
                    if f.name in ("trust_remote_code", "allow_pickle"):
                        checked.append(f"{module.__name__}.{name}.{f.name}")
                        assert f.default is False, checked[-1]
            targets = [obj] if inspect.isfunction(obj) else \
                [m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else []
            for fn in targets:
                for p in inspect.signature(fn).parameters.values():
                    if p.name in ("trust_remote_code", "allow_pickle"):
                        checked.append(f"{module.__name__}.{fn.__qualname__}({p.name})")
                        assert p.default is False or p.default is inspect.Parameter.empty, checked[-1]
    # the ones that matter were really found
    assert {"rlhfkit.train.sft.SFTConfig.allow_pickle", "rlhfkit.models.load_causal_lm(trust_remote_code)",
            "rlhfkit.models.load_causal_lm(allow_pickle)", "rlhfkit.models.load_tokenizer(trust_remote_code)"} <= set(checked)
    assert sum(".trust_remote_code" in c for c in checked) >= 4


def _unsafe_calls(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            call = f"{owner}.{node.func.attr}"
            kw = {k.arg: k.value for k in node.keywords}
            if call in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all",
                        "pickle.load", "pickle.loads", "dill.load", "joblib.load", "np.load", "numpy.load"):
                if not (call in ("np.load", "numpy.load") and getattr(kw.get("allow_pickle"), "value", True) is False):
                    bad.append(f"{call} at line {node.lineno}")
            if call == "torch.load" and getattr(kw.get("weights_only"), "value", None) is not True:
                bad.append(f"torch.load without weights_only=True at line {node.lineno}")
            if getattr(kw.get("trust_remote_code"), "value", None) is True:
                bad.append(f"trust_remote_code=True at line {node.lineno}")
    return bad


def test_no_unsafe_deserialisation_in_the_source():
    """YAML through safe_load only; no pickle; torch.load only with weights_only=True; no literal
    trust_remote_code=True. The scanner itself is checked on a snippet that has each mistake."""
    snippet = ("yaml.load(f)\nyaml.full_load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
               "AutoModel.from_pretrained(p, trust_remote_code=True)\nyaml.safe_load(f)\ntorch.load(p, weights_only=True)\n")
    assert len(_unsafe_calls(ast.parse(snippet))) == 6
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    found = {str(f.relative_to(SRC)): _unsafe_calls(ast.parse(f.read_text())) for f in files}
    assert {f: b for f, b in found.items() if b} == {}
    assert any("yaml.safe_load" in f.read_text() for f in files)


def test_yaml_config_with_a_python_tag_is_refused(tmp_path):
    """A config file that would run a command under yaml.load / unsafe_load is a ConfigError under safe_load."""
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\ndata: d.jsonl\noutput_dir: o\n")
    with pytest.raises(ConfigError, match=f"{cfg}: not valid YAML"):
        parse_config(SFTConfig, ["--config", str(cfg)])
    assert not marker.exists()
