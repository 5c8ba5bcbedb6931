"""Shared fixtures: tiny models and data built on the spot (no network, no hub)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """The toy world's string-format data and a tiny random-init base model."""
    from rlhfkit.tiny_models import make_tiny_model_dir
    from rlhfkit.world import toy

    root = tmp_path_factory.mktemp("world")
    paths = toy.write_dataset(root / "data", seed=0)
    paths["base"] = make_tiny_model_dir(root / "base", toy.vocabulary_texts(), seed=0, hidden_size=128)
    return paths


@pytest.fixture(scope="session")
def sft_dir(world_dir, tmp_path_factory):
    """The toy world's SFT model: says kind and unkind reviews about equally often."""
    from rlhfkit.train.sft import SFTConfig
    from rlhfkit.train.sft import run_sft

    out = tmp_path_factory.mktemp("sft")
    run_sft(SFTConfig(model=world_dir["base"], data=world_dir["sft"], output_dir=str(out), max_steps=300,
                      learning_rate=2e-3, batch_size=32, max_length=32, warmup_ratio=0.1, logging_steps=50, seed=0))
    return str(out)


# The built-in demo pipeline at smoke-test size (the full run is `make demo`).
SHRINK = {"base": {"steps": 30}, "data": {"n_sft": 200, "train_prompts_per_category": 6, "eval_prompts_per_category": 2,
                   "val_prompts_per_category": 2},
          "sft": {"max_steps": 10}, "pairs": {"k": 4, "max_new_tokens": 16}, "rm": {"max_steps": 4, "eval_steps": 2},
          "dpo": {"max_steps": 4}, "ppo": {"max_steps": 2, "batch_size": 4, "max_new_tokens": 16},
          "eval": {"max_new_tokens": 16}, "val": {"max_new_tokens": 16}}


@pytest.fixture(scope="session")
def small_demo_pipeline(tmp_path_factory):
    """A copy of rlhfkit/configs/demo.yaml shrunk to seconds, its base model cached in a temp folder."""
    import yaml

    from rlhfkit.demo import builtin_config

    root = tmp_path_factory.mktemp("demo_pipeline")
    spec = yaml.safe_load(open(builtin_config()))
    for st in spec["stages"] + (spec.get("round") or {}).get("stages", []):  # round stages: pairs_dpo is pairs
        st.setdefault("with", {}).update(SHRINK.get(st["name"], SHRINK.get(st["name"].split("_")[0], {})))
        if st["stage"] == "world-base":
            st["with"]["cache_dir"] = str(root / "cache")
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
# ---------------------------------------------------------------- annotation server (rlhfkit annotate)


@pytest.fixture(scope="session")
def annotate_pg():
    """A factory of fresh, uniquely named PostgreSQL databases (URLs) for the annotation tests, all
    dropped at the end of the session. Needs the server at 127.0.0.1:5432 ($RLHFKIT_TEST_PG names
    another maintenance database); without one the tests skip, except under CI=true, where they fail."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    admin = os.environ.get("RLHFKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(admin, connect_timeout=5).close()
    except psycopg.OperationalError as e:
        message = f"no PostgreSQL server at {admin}: {str(e).strip().splitlines()[0]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    made = []

    def new_database() -> str:
        name = f"rlhfkit_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return admin.rsplit("/", 1)[0] + "/" + name

    yield new_database
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- judges and serving
# The helpers live in judge_support.py: test modules import them from there (a
# `from conftest import` would find tests/browser/conftest.py in a whole-suite run).
from judge_support import SERVED_TABLE, SERVED_WORDS, FakeJudgeEndpoint, make_bigram_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory):
    """The bigram model above with SERVED_TABLE: its replies are known word for word."""
    return make_bigram_model_dir(tmp_path_factory.mktemp("served") / "policy", SERVED_TABLE, SERVED_WORDS)


@pytest.fixture
def fake_judge_endpoint():
    """A factory of FakeJudgeEndpoint servers, all shut down after the test."""
    made = []

    def make(decide, **kw):
        made.append(FakeJudgeEndpoint(decide, **kw))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


