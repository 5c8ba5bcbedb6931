"""Helpers for the `rlhfkit serve` security tests: the served bigram model behind a guard, in
process (FastAPI's TestClient) or as a real `rlhfkit serve` subprocess, and a toy classifier."""

import os
import socket
import subprocess
import sys
import time

GUARD = """refusal: I can't help with that.
input:
  blocklist:
    - bomb
    - regex: 'pass(word|phrase)'
output:
  blocklist: [forbidden]
"""
REFUSAL = "I can't help with that."


def in_process_client(model_dir, guard_path=None, **app_kw):
    """A TestClient on create_app(Server(model_dir)) that returns 5xx responses instead of raising."""
    from fastapi.testclient import TestClient

    from rlhfkit.guard import load_guard
    from rlhfkit.serve import Server
    from rlhfkit.serve_app import create_app

    server = Server(model_dir, "policy", load_guard(guard_path) if guard_path else None, "cpu", 64)
    return TestClient(create_app(server, **app_kw), raise_server_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, root, args=(), env=None, wait_s: float = 90):
    """`rlhfkit serve` on a free port (guard GUARD); returns (process, port, log path) once /health answers."""
    import httpx

    (root / "guard.yaml").write_text(GUARD)
    port = free_port()
    log_path = root / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve", "--model", str(model_dir), "--port", str(port),
                             "--guard", str(root / "guard.yaml"), "--served_model_name", "policy", *args],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    log.close()
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"rlhfkit serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port, log_path
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"rlhfkit serve did not answer within {wait_s} s")
        time.sleep(0.3)


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_last_word_classifier(path, words: list[str], flagged: str) -> str:
    """A two-label (safe, unsafe) sequence classifier over a word tokenizer that flags a text exactly
    when its last word is ``flagged``: one-hot embeddings, attention and MLP outputs zeroed (the
    last position's hidden state is its own token's embedding), and a score head that gives
    "unsafe" a logit of 10 * sqrt(hidden) for ``flagged`` and "safe" the same for every other token.
    """
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.models import save_model
    from rlhfkit.tiny_models import build_word_tokenizer

    tok = build_word_tokenizer([" ".join(words)])
    vocab = len(tok)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096, num_labels=2,
                         id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1},
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    assert vocab <= config.hidden_size
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.score.weight.zero_()
        model.score.weight[0, :vocab] = 10.0
        flag = tok.convert_tokens_to_ids(flagged)
        model.score.weight[0, flag] = 0.0
        model.score.weight[1, flag] = 10.0
    save_model(model, tok, path)
    return str(path)
