"""`rlhfkit annotate` through the real command line: sample pairs -> import -> label through the API
-> export -> `rlhfkit rm` trains on the export; bad import files change nothing."""

import json
import os
import subprocess
import sys

from fastapi.testclient import TestClient

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.store import Store
from rlhfkit.world import toy

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}


def rlhfkit(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rlhfkit", *map(str, args)], capture_output=True, text=True,
                          env=ENV, input=stdin, timeout=timeout)


def add_user(db, name, role, capsys=None):
    """The token `rlhfkit annotate add-user` prints as its last word (in this process when given
    capsys: the same code path without another interpreter start)."""
    args = ["annotate", "add-user", "--db", str(db), "--name", name, "--role", role, "--password", "pw-" + name]
    if capsys is None:
        r = rlhfkit(*args)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        from rlhfkit.cli import main

        code = main(args)
        out, err = capsys.readouterr()
    assert code == 0, err
    assert f"added {role} '{name}'" in out and out.endswith("\n")
    return out.split()[-1]


def test_sample_pairs_to_labels_to_reward_model(world_dir, tmp_path, capsys):
    db = tmp_path / "labels.db"
    pairs_dir = tmp_path / "pairs"
    r = rlhfkit("sample-pairs", "--model", world_dir["base"], "--data", world_dir["prompts"], "--output_dir",
                pairs_dir, "--k", "4", "--max_new_tokens", "8", "--seed", "0")
    assert r.returncode == 0, r.stderr
    pairs_file = pairs_dir / "pairs.jsonl"
    n_pairs = len(pairs_file.read_text().splitlines())
    assert n_pairs >= 8

    r = rlhfkit("annotate", "import", "--db", db, pairs_file, "--overlap", "3")
    assert r.returncode == 0, r.stderr
    assert f"{n_pairs} pairs added" in r.stdout
    tokens = [add_user(db, f"ann{i}", "annotator", capsys) for i in range(4)]
    admin = add_user(db, "lead", "admin")
    assert len(set(tokens + [admin])) == 5 and all(len(t) >= 40 for t in tokens)

    # Four annotators label through the API: three prefer the kinder response, one is contrary.
    store = Store(str(db))
    client = TestClient(create_app(store))
    active = dict(enumerate(tokens))
    for _ in range(200):  # rounds: each annotator answers one task per round, so all four take part
        for i, token in list(active.items()):
            res = client.get("/api/next", headers={"Authorization": f"Bearer {token}"})
            if res.status_code == 204:
                del active[i]
                continue
            task = res.json()
            ra, rb = toy.kind_reward([task["prompt"]] * 2, [task["a"], task["b"]])
            choice = "tie" if ra == rb else ("a" if (ra > rb) != (i == 3) else "b")
            body = {"task_id": task["task_id"], "choice": choice}
            if choice != "tie":
                body["strength"] = "better"
            assert client.post("/api/labels", json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 201
        if not active:
            break
    assert not active
    stats = client.get("/api/stats", headers={"Authorization": f"Bearer {admin}"}).json()
    store.close()
    assert stats["labels"]["pairs"] == 3 * n_pairs  # every pair got K = 3 labels

    out = tmp_path / "prefs.jsonl"
    r = rlhfkit("annotate", "export", "--db", db, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and r.stdout.startswith(f"rlhfkit annotate export: {len(rows)} rows (majority)")
    for row in rows:
        assert {"prompt", "chosen", "rejected", "agreement"} <= set(row) and row["chosen"] != row["rejected"]
        assert row["source"] == "human"  # mixes with AI-judge rows under source_weights
        assert 0.5 < row["agreement"] <= 1 and row["margin"] == 2 / 3
        ka, kb = toy.kind_reward([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
        assert ka >= kb  # the majority (three of four) preferred the kinder response
    from datasets import load_dataset

    assert load_dataset("json", data_files=str(out), split="train").num_rows == len(rows)

    r = rlhfkit("rm", "--model", world_dir["base"], "--data", out, "--output_dir", tmp_path / "rm",
                "--max_steps", "3", "--batch_size", "2", "--logging_steps", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["num_pairs"] == len(rows)

    r = rlhfkit("annotate", "export", "--db", db, "--out", tmp_path / "each.jsonl", "--mode", "per_annotator")
    assert r.returncode == 0, r.stderr
    each = [json.loads(x) for x in (tmp_path / "each.jsonl").read_text().splitlines()]
    assert {x["annotator"] for x in each} == {"ann0", "ann1", "ann2", "ann3"}
    assert all(x["agrees_with_majority"] is False for x in each if x["annotator"] == "ann3" and x["agreement"] >= 0.75)


def test_bad_import_names_file_and_line_and_changes_nothing(tmp_path):
    db = tmp_path / "labels.db"
    good = tmp_path / "good.jsonl"
    pair = {"prompt": "p", "response_a": "x", "response_b": "y"}
    good.write_text("".join(json.dumps({**pair, "id": f"g{i}"}) + "\n" for i in range(3)))
    r = rlhfkit("annotate", "import", "--db", db, good, "--overlap", "2")
    assert r.returncode == 0 and "3 pairs added" in r.stdout, r.stderr
    r = rlhfkit("annotate", "import", "--db", db, good, "--overlap", "2")
    assert r.returncode == 0 and "0 pairs added, 3 already there" in r.stdout, r.stderr

    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({**pair, "id": "b1"}), json.dumps({**pair, "id": "b2"}), json.dumps({**pair, "gold": "c"})]
    bad.write_text("\n".join(lines) + "\n")
    r = rlhfkit("annotate", "import", "--db", db, bad)
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert errors[0] == (f"rlhfkit annotate import: error: {bad}:3: field 'gold': expected \"a\" or \"b\", got 'c'")

    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({**pair, "id": "new"}) + "\n" + json.dumps({**pair, "id": "g1", "prompt": "q"}) + "\n")
    r = rlhfkit("annotate", "import", "--db", db, changed)
    assert r.returncode == 2 and f"{changed}:2: id 'g1' is already in the database with different content" in r.stderr

    r = rlhfkit("annotate", "add-user", "--db", db, "--name", "carol", "--role", "annotator", "--password-stdin",
                stdin="s3cret horse\n")
    assert r.returncode == 0, r.stderr
    token = r.stdout.split()[-1]
    store = Store(str(db))
    try:
        assert sorted(t["external_id"] for t in store.task_rows().values()) == ["g0", "g1", "g2"]  # nothing else
        carol = store.user_by_token(token)
        assert carol.name == "carol" and carol.password_hash.startswith("$argon2id$")
        assert token not in carol.token_hash  # only a digest of the token is stored
        assert store.login("carol", "s3cret horse").id == carol.id and store.login("carol", "s3cret") is None
    finally:
        store.close()

    r = rlhfkit("annotate", "add-user", "--db", db, "--name", "x", "--role", "boss")
    assert r.returncode == 2 and "invalid choice: 'boss'" in r.stderr
    r = rlhfkit("annotate", "migrate", "--db", db)
    assert r.returncode == 0 and r.stdout.strip() == "rlhfkit annotate: database at revision 0002"
    r = rlhfkit("annotate", "import", "--db", "postgresql://nobody@127.0.0.1:1/none", good)
    assert r.returncode == 2 and r.stderr.startswith("rlhfkit annotate import: error: ") and "Traceback" not in r.stderr
