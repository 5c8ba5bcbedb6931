"""The annotation server killed with SIGKILL mid-load and restarted keeps every acknowledged label.

10 annotators label 200 pairs-slots (50 pairs x K=4) against a real ``rlhfkit annotate serve``
process; when about half the labels are acknowledged the server gets SIGKILL, then starts again on
the same database and port. The clients (the load benchmark's, ``benchmarks/annotate_load.py``)
retry through the outage. Every label acknowledged before the kill, and after, must be in the
database, none twice, none beyond K per pair, and the run must finish with all 200 labels.
"""

import importlib.util
import os
import signal
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("annotate_load", ROOT / "benchmarks" / "annotate_load.py")
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    return str(tmp_path / "kill.db") if request.param == "sqlite" else request.getfixturevalue("annotate_pg")()


def test_sigkill_mid_load_loses_no_acknowledged_label(db, tmp_path):
    tokens = load.prepare(db, annotators=10, pairs=50, overlap=4)
    port = load.free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = load.start_server(db, port, log)
    restarted = None
    try:
        load.wait_ready(base, server)
        results = load.Results()
        threads = load.run_clients(base, tokens, results, timeout=240)
        deadline = time.monotonic() + 120
        while results.count() < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert results.count() >= 100, f"only {results.count()} labels in 120 s; server log:\n{log.read_text()}"
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        acked_before_kill = set(results.acked)
        assert len(acked_before_kill) < 200  # killed mid-load, not after
        time.sleep(0.5)  # clients meet a dead port for a moment
        restarted = load.start_server(db, port, log)
        load.wait_ready(base, restarted)
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads)
    finally:
        for proc in (server, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    check = load.verify(db, results, tokens)
    assert results.errors == 0 and not results.problems, results.problems[:5]
    assert check["lost"] == 0 and check["duplicated"] == 0 and check["over_assigned"] == 0, check
    assert check["stored"] == 200 and check["acknowledged"] >= len(acked_before_kill)
    # the labels acknowledged before the kill, specifically, survived it
    sub = load.Results()
    sub.acked = acked_before_kill
    assert load.verify(db, sub, tokens)["lost"] == 0
