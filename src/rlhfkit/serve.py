"""``rlhfkit serve``: an OpenAI-compatible server for a trained policy, behind optional filters.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (messages rendered with the model's
chat template) and ``POST /v1/completions`` (raw prompt), each with ``stream: true`` as
server-sent events in OpenAI's chunk format ending with ``data: [DONE]``. Sampling reuses
``sampling.generate`` (KV cache, the tokenizer's and template's end tokens, stop strings).

Supported request fields: ``model``, ``messages`` / ``prompt``, ``max_tokens`` (or
``max_completion_tokens``), ``temperature`` (0 = greedy), ``top_p``, ``stop`` (a string or up to 4),
``seed``, ``stream``, ``stream_options``, ``user``, ``n`` = 1, and penalties / ``logprobs`` / ``echo``
only at their neutral values; anything else is refused with a 400 naming the field (never
silently ignored). Bodies are validated against strict schemas (``serve_schema``: no type
coercion), and every malformed body is a 400 in OpenAI's error shape with ``param`` naming the field.

Limits, checked before any work (``serve_gate.RequestGate``, then ``Server.parse``): with an API key
(``--api_key`` or ``$RLHFKIT_API_KEY``) every ``/v1`` route needs ``Authorization: Bearer KEY``
(401 otherwise; ``/health`` stays open); a body over ``max_request_bytes`` is a 413 from its
Content-Length or while it is read; a prompt over context x ``BYTES_PER_TOKEN`` UTF-8 bytes is a 413
before the guard or the tokenizer sees it.

Guard (``--guard FILE``, see ``guard.py``): the input filter checks every message of every role
(each one, and the conversation joined) or the prompt before generation; the output filter checks
the generated text as generated, before it is cut at a stop string (and the cut text too). A
blocked request gets the guard's ``refusal`` as its content with ``finish_reason:
"content_filter"``. Streaming: the whole response is generated and checked first, then streamed in
word pieces, so a client never receives a chunk the filter has not cleared (no hold-back window
is needed; the first chunk waits for the whole generation).

Batching (``serve_batch.Batcher``): concurrent requests decode together, up to ``max_batch_size``
rows, those arriving within ``batch_window_ms`` of each other starting together and later ones
joining the running batch between decode steps; each keeps its own seed, knobs and stopping, so a
request gets the reply it would get alone with the same seed (up to float rounding, see
docs/serving.md).
"""

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .config import ConfigError, option, require
from .serve_gate import RequestError, api_key_of


@dataclass
class ServeConfig:
    """Serve a policy through an OpenAI-compatible API, behind optional input/output filters."""

    stage: ClassVar[str] = "serve"

    model: str = option("", "Model folder to serve (required).")
    host: str = option("127.0.0.1", "Interface to listen on (0.0.0.0 for every interface; put TLS in front).")
    port: int = option(8000, "Port to listen on.")
    guard: str = option("", "Guard YAML with `input` / `output` sections (blocklist, classifier) and a `refusal`; empty: no filters.")
    served_model_name: str = option("", "Model id clients pass and /v1/models lists; empty means the folder's name.")
    max_tokens_limit: int = option(1024, "Largest max_tokens a request may ask for.")
    device: str = option("auto", "auto, cpu, cuda.")
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint's folder to run.")
    api_key: str = option("", "Require 'Authorization: Bearer KEY' on every /v1 route; empty: $RLHFKIT_API_KEY, else no key.")
    max_request_bytes: int = option(0, "Largest request body in bytes (413 beyond); 0: max(1 MiB, 4 x context x 32).")
    max_batch_size: int = option(16, "Most requests decoding together (1: one at a time); later ones join as rows finish.")
    batch_window_ms: float = option(5.0, "How long an idle server waits after a request for others to start with it (ms).")

    def check(self) -> None:
        require(self, "model")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"config: field 'port' must be 0-65535, got {self.port}")
        if self.max_batch_size < 1:
            raise ConfigError(f"config: field 'max_batch_size' must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.batch_window_ms <= 10_000:
            raise ConfigError(f"config: field 'batch_window_ms' must be 0-10000, got {self.batch_window_ms}")


log = logging.getLogger("rlhfkit.serve")

ALLOWED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
           "seed", "stream", "stream_options", "user", "n", "presence_penalty", "frequency_penalty", "logprobs",
           "top_logprobs", "echo"}
NEUTRAL = {"n": (1, None), "presence_penalty": (0, 0.0, None), "frequency_penalty": (0, 0.0, None),
           "logprobs": (False, None), "top_logprobs": (None,), "echo": (False, None)}
# A prompt longer than context x this many UTF-8 bytes cannot fit the context with any subword
# tokenizer (English averages ~4 bytes a token; long merged tokens reach ~16-32): refuse it unread.
BYTES_PER_TOKEN = 32
NO_CONTEXT_PROMPT_BYTES = 1 << 20  # the prompt cap of a model without max_position_embeddings


def _number(body: dict, key: str, default: float, low: float, high: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        value = default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or float(value).is_integer())
    if not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise RequestError(f"'{key}' must be {kind} in [{low:g}, {high:g}], got {value!r}", key)
    return int(value) if integer else float(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    return stops


def _content(message: dict) -> str:
    """A schema-checked message's text (text parts joined)."""
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}]
        return "".join(p["text"] for p in content)
    return content or ""  # null content: empty text


def _messages(body: dict) -> list[dict]:
    return [{"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m)}
            for m in body["messages"]]


def _utf8_size(texts: list[str], param: str) -> int:
    try:
        return sum(len(t.encode("utf-8")) for t in texts)
    except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"), which no tokenizer takes
        raise RequestError(f"'{param}' holds a lone UTF-16 surrogate (not valid Unicode text)", param) from None


def _neutral(value, allowed: tuple) -> bool:
    # type-exact: True == 1 in Python, but `"n": true` is not `"n": 1`
    return any(value is a or (type(value) is type(a) and value == a) for a in allowed)


class Server:
    """The model, tokenizer, guard and request handling, independent of the web framework."""

    def __init__(self, model_dir: str, name: str = "", guard=None, device: str = "auto", max_tokens_limit: int = 1024,
                 trust_remote_code: bool = False, max_request_bytes: int = 0, max_batch_size: int = 16,
                 batch_window_ms: float = 5.0):
        from .models import load_causal_lm, load_tokenizer, resolve_device
        from .serve_batch import Batcher

        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code, padding_side="left")
        self.model = load_causal_lm(model_dir, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.name = name or Path(model_dir).resolve().name
        self.guard, self.max_tokens_limit = guard, max_tokens_limit
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_prompt_bytes = self.context * BYTES_PER_TOKEN if self.context else NO_CONTEXT_PROMPT_BYTES
        # JSON escapes make a body up to ~6x its text ("\u00e9"); 4x the prompt cap covers ordinary escaping
        self.max_request_bytes = max_request_bytes or max(1 << 20, 4 * self.max_prompt_bytes)
        self.batcher = Batcher(self.model, self.tokenizer, max_batch_size, batch_window_ms / 1000)
        self.created = int(time.time())

    # ------------------------------------------------------------------ parsing

    def parse(self, body, chat: bool) -> dict:
        from pydantic import ValidationError

        from .serve_schema import ChatRequest, CompletionRequest, first_error

        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        unknown = sorted(set(body) - ALLOWED)
        if unknown:
            raise RequestError(f"unsupported parameter '{unknown[0]}' (rlhfkit serve supports: "
                               f"{', '.join(sorted(ALLOWED))})", unknown[0])
        for key, neutral in NEUTRAL.items():
            if key in body and not _neutral(body[key], neutral):
                raise RequestError(f"'{key}' = {repr(body[key])[:40]} is not supported (only {neutral[0]!r})", key)
        if not chat and "messages" in body or chat and "prompt" in body:
            bad = "messages" if not chat else "prompt"
            raise RequestError(f"'{bad}' belongs to the other endpoint", bad)
        try:
            (ChatRequest if chat else CompletionRequest).model_validate(body)
        except ValidationError as e:
            param, message = first_error(e)
            raise RequestError(message, param) from None
        if body.get("model") not in (self.name, None):
            raise RequestError(f"the model '{body.get('model')}' does not exist; this server serves '{self.name}'",
                               "model", 404, "not_found_error")
        limit = self.max_tokens_limit
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        req = {"max_tokens": _number(body, key, min(256, limit) if chat else 16, 1, limit, integer=True),
               "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
               "top_p": _number(body, "top_p", 1.0, 1e-9, 1.0), "stop": _stops(body),
               "stream": bool(body.get("stream", False)),
               "include_usage": isinstance(body.get("stream_options"), dict)
               and bool(body["stream_options"].get("include_usage")),
               "seed": _number(body, "seed", 0, -2**63, 2**63 - 1, integer=True) if body.get("seed") is not None else None}
        if chat:
            req["messages"] = _messages(body)
            req["check_text"] = [m["content"] for m in req["messages"]]  # every role: an assistant turn steers too
        else:
            prompt = body["prompt"]
            req["prompt"] = prompt[0] if isinstance(prompt, list) else prompt
            req["check_text"] = [req["prompt"]]
        field = "messages" if chat else "prompt"
        size = _utf8_size(req["check_text"], field)
        if size > self.max_prompt_bytes:
            raise RequestError(f"the {field} is {size} bytes; this server takes at most {self.max_prompt_bytes} "
                               f"(the model's context x {BYTES_PER_TOKEN} bytes a token)", field, 413,
                               "request_too_large")
        return req

    # ------------------------------------------------------------------ generation

    def _prompt_ids(self, req: dict) -> list[int]:
        from .data.tokenize import prompt_ids

        try:
            ids = prompt_ids(self.tokenizer, req["messages"] if "messages" in req else req["prompt"])
        except ValueError as e:  # no chat template
            raise RequestError(str(e), "messages") from None
        except Exception as e:  # a template that refuses the conversation (roles, alternation)
            raise RequestError(f"the chat template cannot render these messages: {e}", "messages") from None
        if not ids:  # a prompt of only whitespace, say, under a tokenizer that adds no BOS token
            raise RequestError("the prompt is empty once tokenized", "messages" if "messages" in req else "prompt")
        if self.context and len(ids) + req["max_tokens"] > self.context:
            raise RequestError(f"the prompt ({len(ids)} tokens) plus max_tokens ({req['max_tokens']}) exceeds the "
                               f"model's context of {self.context} tokens", "max_tokens")
        return ids

    def complete(self, req: dict, request_id: str) -> dict:
        """{text, finish_reason, prompt_tokens, completion_tokens}, with the guard applied."""
        if self.guard is not None and self.guard.check("input", req["check_text"], request_id).blocked:
            return {"text": self.guard.refusal, "finish_reason": "content_filter", "prompt_tokens": 0,
                    "completion_tokens": 0}
        ids = self._prompt_ids(req)
        seed = req["seed"] % 2**63 if req["seed"] is not None else random.getrandbits(63)
        reply = self.batcher.submit(ids, req["max_tokens"], req["temperature"], req["top_p"], req["stop"],
                                    seed).result()
        generated = self.tokenizer.decode(reply.tokens, skip_special_tokens=True)
        cuts = [i for s in req["stop"] if (i := generated.find(s)) >= 0]
        text = generated[:min(cuts, default=len(generated))]  # the text before the earliest stop string
        if "messages" in req:
            text = text.strip()
        out = {"text": text, "finish_reason": "stop" if reply.ended else "length",
               "prompt_tokens": len(ids), "completion_tokens": len(reply.tokens)}
        if self.guard is not None:
            # the text as generated, before the stop-string cut: stop ["dden"] must not turn a blocked
            # "forbidden" into "forbi"; the cut text too (a cut can also make a whole word)
            checked = [generated] if generated.strip() == text.strip() else [generated, text]
            if any(self.guard.check("output", t, request_id).blocked for t in checked):
                out.update(text=self.guard.refusal, finish_reason="content_filter")
        return out


def run_serve(cfg) -> dict:
    """Load the model (and guard), then serve until interrupted."""
    from .extras import require_extra

    require_extra("serve", "fastapi", "uvicorn")
    import uvicorn

    from .guard import load_guard
    from .serve_app import create_app

    if not (Path(cfg.model) / "config.json").is_file():
        raise ConfigError(f"field 'model': no model folder (config.json) at {cfg.model!r}")
    if cfg.max_request_bytes < 0:
        raise ConfigError("field 'max_request_bytes': must be >= 0 (0: derived from the model's context)")
    guard = load_guard(cfg.guard) if cfg.guard else None
    server = Server(cfg.model, cfg.served_model_name, guard, cfg.device, cfg.max_tokens_limit, cfg.trust_remote_code,
                    cfg.max_request_bytes, cfg.max_batch_size, cfg.batch_window_ms)
    key = api_key_of(cfg)
    app = create_app(server, api_key=key)
    print(f"[rlhfkit serve] {server.name} on http://{cfg.host}:{cfg.port}/v1"
          + (f" behind the guard {cfg.guard}" if guard else " (no guard)")
          + ("; API key required" if key else "; no API key (anyone who can connect can generate)"), flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return {"stage": "serve", "model": server.name}
