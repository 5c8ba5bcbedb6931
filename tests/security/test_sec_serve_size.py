"""Issue #19 point 9: an oversized request is refused (413, one-line message) before any
tokenizing or guard work, in milliseconds and flat memory.

Two caps: the whole body (checked on Content-Length before reading, then while the stream is read,
for chunked bodies) and the prompt text (UTF-8 bytes of the prompt or all message contents), at
the model's context x serve.BYTES_PER_TOKEN: a prompt that large cannot fit the context with any
subword tokenizer. Before the fix a 50 MB prompt was read, guard-checked and tokenized (128 s,
5.5 GB peak) and only then refused by the context check."""

import json
import select
import socket
import time
from pathlib import Path

import pytest
from serve_support import in_process_client, start_server, stop_server

MB = 1 << 20


@pytest.fixture(scope="module")
def server(served_model_dir, tmp_path_factory):
    proc, port, _ = start_server(served_model_dir, tmp_path_factory.mktemp("size"))
    yield proc, port
    stop_server(proc)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _send_huge(port: int, body_mb: int, chunked: bool, deadline_s: float = 20.0) -> tuple[bytes, float]:
    """POST a body_mb MB chat request (declared by Content-Length, or sent chunked) over a raw
    socket, reading the answer as soon as there is one; returns (response bytes, seconds)."""
    head, tail = b'{"messages": [{"role": "user", "content": "', b'"}]}'
    fill = b"the soup is hot " * (MB // 16)  # 1 MB of prompt text per chunk (no blocked word)
    size = len(head) + body_mb * len(fill) + len(tail)
    headers = ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n")
               + "\r\n").encode()
    reply, start = b"", time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as s:
        s.sendall(headers)
        parts = [head] + [fill] * body_mb + [tail] + ([b""] if chunked else [])  # b"": the last chunk
        for part in parts:
            if select.select([s], [], [], 0)[0]:
                break  # the server has answered: stop sending
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            except (BrokenPipeError, ConnectionResetError):
                break
            if time.perf_counter() - start > deadline_s:
                break
        s.settimeout(max(0.1, deadline_s - (time.perf_counter() - start)))
        try:
            while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        except (socket.timeout, ConnectionResetError):
            pass
    return reply, time.perf_counter() - start


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_50mb_request_is_refused_fast_in_flat_memory(server, chunked):
    proc, port = server
    idle_kib = _status_kib(proc.pid, "VmRSS")
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    reply, seconds = _send_huge(port, 50, chunked)
    peak_kib = _status_kib(proc.pid, "VmHWM")
    status = reply.split(b"\r\n", 1)[0]
    print(f"\n50 MB {'chunked' if chunked else 'Content-Length'} request: {status.decode(errors='replace')} in "
          f"{seconds * 1000:.0f} ms; server RSS idle {idle_kib / 1024:.0f} MiB, peak during the request "
          f"+{(peak_kib - idle_kib) / 1024:.1f} MiB")
    assert status.startswith(b"HTTP/1.1 413"), reply[:300]
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert "\n" not in error["message"] and "request body" in error["message"] and error["type"] == "request_too_large"
    assert seconds < 1.0
    assert peak_kib - idle_kib < 300 * 1024
    assert proc.poll() is None


def test_prompt_over_the_context_byte_cap_is_413_before_the_guard_and_tokenizer(served_model_dir, tmp_path,
                                                                              monkeypatch):
    """A body under the body cap whose prompt text is over context x BYTES_PER_TOKEN: 413 naming
    the field, and neither the guard nor the tokenizer saw it."""
    from serve_support import GUARD

    from rlhfkit import serve
    from rlhfkit.data import tokenize
    from rlhfkit.guard import Decision

    (tmp_path / "guard.yaml").write_text(GUARD)
    client = in_process_client(served_model_dir, tmp_path / "guard.yaml")
    server = client.app.state.server
    calls = []
    real_ids = tokenize.prompt_ids
    monkeypatch.setattr(server.guard, "check", lambda *a, **k: calls.append("guard") or Decision(False))
    monkeypatch.setattr(tokenize, "prompt_ids", lambda *a: calls.append("tokenize") or real_ids(*a))
    assert server.context == 4096 and server.max_prompt_bytes == 4096 * serve.BYTES_PER_TOKEN
    big = "x" * (server.max_prompt_bytes + 1)
    for path, body, field in (("/v1/completions", {"prompt": big}, "prompt"),
                              ("/v1/chat/completions", {"messages": [{"role": "user", "content": big[:-9]},
                                                                     {"role": "user", "content": "123456789"}]},
                               "messages")):
        start = time.perf_counter()
        r = client.post(path, json=body)
        assert r.status_code == 413 and time.perf_counter() - start < 1.0, r.text[:300]
        error = r.json()["error"]
        assert error["param"] == field and f"at most {server.max_prompt_bytes}" in error["message"]
    assert calls == []
    # one byte under the cap is read, checked and tokenized as usual (then refused by the token count)
    r = client.post("/v1/completions", json={"prompt": "x" * server.max_prompt_bytes, "temperature": 0})
    assert r.status_code != 413 and calls


def test_body_cap_is_checked_on_content_length(served_model_dir):
    client = in_process_client(served_model_dir)
    cap = client.app.state.server.max_request_bytes
    r = client.post("/v1/completions", content=b" " * (cap + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and f"at most {cap} bytes" in r.json()["error"]["message"]
