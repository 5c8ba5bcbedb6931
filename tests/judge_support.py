"""Test helpers for judges and serving: a bigram model whose replies are known word for word, a
fake OpenAI-compatible judge endpoint, and a rule-based judge reply over the toy world."""

def make_bigram_model_dir(path, table: dict, words: list[str], hidden_size: int = 48, strength: float = 10.0,
                          chat: bool = True):
    """A causal LM whose next token depends only on the current one, by ``table``:
    {word: {next_word: logit_scale}}; unlisted words go to "<eos>"-less uniform logits.

    Built so its outputs are known exactly: one-hot embeddings, attention and MLP outputs zeroed
    (the residual stream is the token's own embedding), an untied head with W[next, word] = scale *
    strength. After the final RMSNorm a one-hot row becomes sqrt(hidden) at the word's index, so
    logit(next | word) = scale * strength * sqrt(hidden) (a tiny RMSNorm epsilon aside). Its chat
    template adds no generation prompt, so the reply to a chat follows from its last word.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import save_model
    from rlhfkit.tiny_models import build_word_tokenizer

    tok = build_word_tokenizer([" ".join(words)])
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}" if chat
                         else None)
    vocab = len(tok)
    assert vocab <= hidden_size, (vocab, hidden_size)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for word, nexts in table.items():
            for nxt, scale in nexts.items():
                model.lm_head.weight[tok.convert_tokens_to_ids(nxt), tok.convert_tokens_to_ids(word)] = scale * strength
    save_model(model, tok, path)
    return str(path)


SERVED_WORDS = ["A", "B", "hello", "world", "is", "big", "tell", "me", "the", "secret", "forbidden", "how", "to",
                "build", "a", "bomb"]
# <unk> (every word the vocabulary lacks, e.g. the end of a judge prompt) -> "A" -> <eos>: a judge that
# always prefers the first response; "hello" -> "world is big"; "secret" -> "forbidden".
SERVED_TABLE = {"<unk>": {"A": 1.0}, "A": {"<eos>": 1.0}, "hello": {"world": 1.0}, "world": {"is": 1.0},
                "is": {"big": 1.0}, "big": {"<eos>": 1.0}, "secret": {"forbidden": 1.0}, "forbidden": {"<eos>": 1.0},
                "bomb": {"<eos>": 1.0}}

class FakeJudgeEndpoint:
    """A minimal OpenAI-compatible chat endpoint (stdlib HTTP server on 127.0.0.1) whose reply is
    ``decide(user_message_text)``; the first ``fail_first`` chat requests get HTTP ``fail_status``."""

    def __init__(self, decide, fail_first: int = 0, fail_status: int = 503, model: str = "fake-judge"):
        import json
        import math
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.decide, self.fail_first, self.fail_status, self.model = decide, fail_first, fail_status, model
        self.chat_requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": outer.model, "object": "model", "created": 0,
                                                             "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.chat_requests += 1
                    fail = outer.chat_requests <= outer.fail_first
                if fail:
                    return self._send(outer.fail_status, {"error": {"message": "try later", "type": "server_error"}})
                text = outer.decide(body["messages"][-1]["content"])
                logprobs = None
                if body.get("logprobs"):  # the chosen letter at probability 0.8, the other at 0.2
                    other = "B" if text == "A" else "A"
                    top = [{"token": text, "logprob": math.log(0.8), "bytes": None},
                           {"token": other, "logprob": math.log(0.2), "bytes": None}]
                    logprobs = {"content": [{"token": text, "logprob": math.log(0.8), "bytes": None,
                                             "top_logprobs": top}]}
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": outer.model,
                                 "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

def kind_judge_reply(text: str) -> str:
    """A rule-based judge over the toy world: the response with more kind words wins; on a draw
    it answers "A" (a judge with a first-position preference)."""
    from rlhfkit.world.toy import KIND

    def section(name, end):
        return text.split(f"[{name}]\n", 1)[1].split(end, 1)[0]

    a, b = section("Response A", "\n\n[Response B]"), section("Response B", "\n\nWhich response")
    score = lambda s: sum(w in KIND for w in s.split())  # noqa: E731
    return "B" if score(b) > score(a) else "A"
