"""`pip install rlhfkit` without extras: the trainers work, and a command that needs the web stack
or the OpenAI client says in one line which extra to install (exit 2).

Each command runs in a subprocess whose import system refuses the extras' modules (a meta-path
finder installed before rlhfkit is imported), as if they were not installed."""

import os
import subprocess
import sys

import pytest

# the annotate, judge and serve extras' own modules (not jinja2 or pydantic: transformers and
# other core dependencies bring those)
BLOCKED = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "argon2", "openai",
           "krippendorff", "markdown", "multipart", "python_multipart")

WRAPPER = f"""
import sys

BLOCKED = {BLOCKED!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
from rlhfkit.cli import entry

sys.exit(entry())
"""


def rlhfkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    # sys.argv[0] is "-c": entry() reads the arguments after it
    return subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_blocker_blocks():
    proc = subprocess.run([sys.executable, "-c", WRAPPER.replace("from rlhfkit.cli import entry", "import fastapi")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "No module named 'fastapi'" in proc.stderr


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_help_without_extras(stage):
    proc = rlhfkit(stage, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"rlhfkit {stage}" in proc.stdout and "--learning_rate" in proc.stdout


def test_serve_help_without_extras():
    proc = rlhfkit("serve", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--guard" in proc.stdout


def test_tiny_sft_without_extras(world_dir, tmp_path):
    out = tmp_path / "sft"
    proc = rlhfkit("sft", "--model", world_dir["base"], "--data", world_dir["sft"], "--output_dir", str(out),
                   "--max_steps", "2", "--batch_size", "4", "--max_length", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def hint(command: str, extra: str, first_missing: str) -> str:
    return (f"rlhfkit {command}: error: this command needs the {extra} extra: pip install 'rlhfkit[{extra}]' "
            f"(missing: {first_missing}")


@pytest.mark.parametrize("sub", ["serve", "import", "add-user", "export", "stats", "migrate"])
def test_annotate_without_the_extra_is_one_line(sub, tmp_path):
    args = {"import": ["pairs.jsonl"], "add-user": ["--name", "a", "--role", "admin"], "export": ["--out", "x.jsonl"]}
    proc = rlhfkit("annotate", sub, "--db", str(tmp_path / "a.db"), *args.get(sub, []), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == hint(f"annotate {sub}", "annotate", "fastapi") + \
        ", uvicorn, sqlalchemy, alembic, argon2, markdown, krippendorff)"
    assert not (tmp_path / "a.db").exists()


def test_serve_without_the_extra_is_one_line(world_dir):
    proc = rlhfkit("serve", "--model", world_dir["base"], "--port", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == hint("serve", "serve", "fastapi") + ", uvicorn)"


def test_judge_endpoint_without_the_extra_is_one_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    proc = rlhfkit("judge", "--judge", "http://127.0.0.1:1/v1", "--data", str(pairs),
                   "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == hint("judge", "judge", "openai") + ")"


def test_judge_reward_source_without_the_extra_is_one_line(world_dir, tmp_path):
    proc = rlhfkit("grpo", "--model", world_dir["base"], "--data", world_dir["prompts"], "--output_dir",
                   str(tmp_path / "grpo"), "--reward_fn", "judge:http://127.0.0.1:1/v1", "--max_steps", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == hint("grpo", "judge", "openai") + ")"
