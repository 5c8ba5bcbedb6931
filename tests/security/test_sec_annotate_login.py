"""Issue #19, points 1 and 2: password guessing on the annotation server's /login.

1. Parallel attempts on one name used to be password-checked all at once (the limit was read
   before the check and the failure recorded after it): 40 parallel POST /login were 40 x 303 and
   the server grew by ~2 GB (argon2 needs 64 MiB per check). Attempts are now reserved atomically
   before the check and at most two checks run at a time. Proved against a real ``rlhfkit annotate
   serve`` process on 127.0.0.1 with 40 threads; its peak RSS is sampled during the burst.
2. uvicorn trusted X-Forwarded-* from 127.0.0.1 by default, so a local client could pick its own
   address; and 20 failures from one address locked out everyone behind it, the admin's correct
   password included. Forwarded headers are now trusted only from ``--forwarded-allow-ips``, and
   an address under attack is only slowed down: hard limits are per name and per (address, name).
"""

import os
import re
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.auth import HashGate, LoginLimiter
from rlhfkit.annotate.store import Store

PW = "the-right-password"
PARALLEL = 40
MIB = 1024 * 1024


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rlhfkit annotate serve`` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, db, log, *extra):
        self.base = f"http://127.0.0.1:{(port := _free_port())}"
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "annotate", "serve", "--db", db, "--host",
                                      "127.0.0.1", "--port", str(port), *extra],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, open(log).read()[-2000:]
            try:
                if httpx.get(f"{self.base}/login", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.base} not ready")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


@pytest.fixture
def server_db(tmp_path):
    db = str(tmp_path / "login.db")
    store = Store(db)
    for name, role in (("alice", "annotator"), ("bob", "annotator"), ("boss", "admin")):
        store.add_user(name, role, PW)
    store.close()
    return db


def _csrf(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _attempt(client, name, password, headers=None):
    token = _csrf(client.get("/login", headers=headers).text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                       headers=headers, follow_redirects=False)


def _burst(server, names):
    """One thread per name, all posting at once after a barrier; (statuses, peak RSS during the burst)."""
    clients = [httpx.Client(base_url=server.base, timeout=120) for _ in names]
    tokens = [_csrf(c.get("/login").text) for c in clients]
    barrier, statuses, peak, done = threading.Barrier(len(names)), [None] * len(names), [server.rss()], threading.Event()

    def one(i):
        barrier.wait(timeout=60)
        statuses[i] = clients[i].post("/login", data={"name": names[i], "password": "wrong guess",
                                                      "csrf_token": tokens[i]}, follow_redirects=False).status_code

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    done.set()
    sampler.join()
    for c in clients:
        c.close()
    return statuses, peak[0]


def test_forty_parallel_logins_are_reserved_before_checking_and_memory_stays_flat(server_db, tmp_path):
    """40 parallel wrong passwords for one name: only the 5 the (address, name) limit allows are
    checked (303), the other 35 are refused unchecked (429). Then 40 parallel wrong passwords for 40
    different names (each allowed a check): the server's RSS stays < 300 MB above idle throughout."""
    server = Server(server_db, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base) as c:  # warm up: one check of each kind has run
            assert _attempt(c, "bob", PW).headers["location"] == "/"
            assert "error=" in _attempt(c, "nobody", "x").headers["location"]
        idle = server.rss()
        statuses, peak_one = _burst(server, ["alice"] * PARALLEL)
        assert sorted(statuses) == [303] * 5 + [429] * (PARALLEL - 5), statuses
        statuses, peak_many = _burst(server, [f"user{i}" for i in range(PARALLEL)])
        assert statuses == [303] * PARALLEL, statuses  # no name over its limit; the address is only slowed
        grown = (max(peak_one, peak_many) - idle) / MIB
        print(f"idle RSS {idle / MIB:.0f} MiB; peak during 40 parallel logins on one name "
              f"{(peak_one - idle) / MIB:+.0f} MiB, on 40 names {(peak_many - idle) / MIB:+.0f} MiB")
        assert grown < 300, f"server grew {grown:.0f} MiB above idle during the burst"
    finally:
        server.stop()


def test_forwarded_headers_are_ignored_unless_the_proxy_is_named(server_db, tmp_path):
    """A client on 127.0.0.1 sends X-Forwarded-For / X-Forwarded-Proto. Without --forwarded-allow-ips
    they are ignored: the login cookie is not marked Secure (the request was plain http) and rotating
    X-Forwarded-For gives no fresh attempts. With the proxy named, they are honoured."""
    spoof = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    server = Server(server_db, tmp_path / "plain.log")
    try:
        with httpx.Client(base_url=server.base) as c:
            assert "secure" not in c.get("/login", headers=spoof).headers["set-cookie"].lower()
            codes = [_attempt(c, "alice", "guess", {"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                     for i in range(6)]
            assert codes == [303] * 5 + [429], codes
    finally:
        server.stop()
    server = Server(server_db, tmp_path / "proxied.log", "--forwarded-allow-ips", "127.0.0.1")
    try:
        with httpx.Client(base_url=server.base) as c:
            assert "secure" in c.get("/login", headers=spoof).headers["set-cookie"].lower()
            # behind the named proxy, each real client has its own (address, name) count
            codes = [_attempt(c, "bob", "guess", {"X-Forwarded-For": "198.51.100.1"}).status_code for _ in range(6)]
            assert codes == [303] * 5 + [429], codes
            assert _attempt(c, "bob", PW, {"X-Forwarded-For": "198.51.100.2"}).headers["location"] == "/"
    finally:
        server.stop()


def test_an_address_under_attack_is_slowed_not_locked_and_the_admin_still_logs_in(tmp_path):
    """25 failures for 25 names from one address (a fake clock; no waiting): the address is slowed
    down (each further check waits ``slow_down`` seconds) but never refused, so the admin's correct
    password from the same address still logs in; the per-name limit still holds."""
    store = Store(str(tmp_path / "slow.db"))
    store.add_user("boss", "admin", PW)
    store.add_user("alice", "annotator", PW)
    now = [1000.0]
    limiter = LoginLimiter(window=60, slow_down=0.01, clock=lambda: now[0])
    c = TestClient(create_app(store, limiter))
    for i in range(25):
        r = _attempt(c, f"nobody{i}", "guess")
        assert r.status_code == 303 and "error=" in r.headers["location"], (i, r.status_code)
    ticket = limiter.reserve("nobody99", "testclient")
    assert (ticket.retry_after, ticket.delay) == (0, 0.01)  # slowed, not refused
    limiter.settle(ticket, ok=False)
    assert _attempt(c, "boss", PW).headers["location"] == "/"
    for _ in range(5):
        assert _attempt(c, "alice", "guess").status_code == 303
    assert _attempt(c, "alice", PW).status_code == 429  # alice's name (from this address) is locked
    now[0] += 61
    assert _attempt(c, "alice", PW).headers["location"] == "/"
    store.close()


def test_a_login_waiting_too_long_for_a_hash_slot_gets_429_and_is_not_counted(tmp_path):
    """Every check slot busy for longer than ``max_wait``: 429 "busy" with Retry-After, the password
    unchecked and the attempt not counted (six of them do not lock the name); a free slot logs in."""
    store = Store(str(tmp_path / "busy.db"))
    store.add_user("alice", "annotator", PW)
    gate = HashGate(slots=1, max_wait=0.05)
    c = TestClient(create_app(store, hash_gate=gate))
    assert gate.enter()  # a long check holds the only slot
    for _ in range(6):
        r = _attempt(c, "alice", PW)
        assert r.status_code == 429 and "busy" in r.text and int(r.headers["retry-after"]) > 0
    gate.leave()
    assert _attempt(c, "alice", PW).headers["location"] == "/"
    store.close()


def test_the_limiter_forgets_aged_out_names_so_memory_stays_bounded():
    """Attempts on ever new names (a spray over days) must not grow the limiter without bound."""
    now = [0.0]
    limiter = LoginLimiter(window=60, clock=lambda: now[0])
    for i in range(3 * LoginLimiter.MAX_KEYS):
        now[0] += 0.1  # 600 attempts per window
        limiter.settle(limiter.reserve(f"name{i}", f"10.0.{i % 7}.1"), ok=False)
    assert len(limiter) <= LoginLimiter.MAX_KEYS + 3 * 600
