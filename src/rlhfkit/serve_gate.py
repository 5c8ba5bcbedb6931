"""The gate in front of ``rlhfkit serve``'s /v1 routes: the API key and the body-size cap, checked
by an ASGI middleware (``RequestGate``) before any route reads the body, and the errors every
refusal uses (OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``)."""

import hmac
import json
import os

API_KEY_ENV = "RLHFKIT_API_KEY"


def api_key_of(cfg) -> str:
    """The key every /v1 request must bear: ``cfg.api_key``, else ``$RLHFKIT_API_KEY``, else none."""
    return cfg.api_key or os.environ.get(API_KEY_ENV, "")


def authorized(header: str | None, key: str) -> bool:
    """Whether an Authorization header is ``Bearer <key>``; hmac.compare_digest takes the same time
    wherever the two differ, so response times do not leak the key a byte at a time."""
    scheme, _, token = (header or "").strip().partition(" ")
    same = hmac.compare_digest(token.strip().encode("utf-8", "replace"), key.encode("utf-8"))
    return same and scheme.lower() in ("bearer",)


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


def json_body(raw: bytes):
    """The parsed JSON body; a RequestError (400) for anything that is not JSON."""
    try:
        return json.loads(raw)
    except RecursionError:  # deeply nested arrays or objects: the decoder recurses once per level
        raise RequestError("the request body nests JSON too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints over Python's 4300-digit limit
        raise RequestError(f"the request body is not valid JSON: {str(e).splitlines()[0][:200]}") from None


class RequestGate:
    """ASGI middleware in front of every /v1 route: the API key, then the body-size cap (from the
    Content-Length, then counted while the body is read), before any route parses a byte of it.
    The body, once read within the cap, is handed on to the route."""

    def __init__(self, app, api_key: str, max_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and not authorized(headers.get(b"authorization", b"").decode("latin-1"), self.api_key):
            return await _send_error(send, RequestError(
                "a valid API key is required: send the header 'Authorization: Bearer KEY'", None, 401,
                "authentication_error"))
        too_big = RequestError(f"the request body is over the limit of this server: at most {self.max_bytes} bytes",
                               None, 413, "request_too_large")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_error(send, too_big if length.isdigit() else RequestError("bad Content-Length header"))
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _send_error(send, too_big)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


async def _send_error(send, e: RequestError) -> None:
    payload = json.dumps({"error": {"message": str(e), "type": e.kind, "param": e.param, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if e.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if e.status == 413:
        headers.append((b"connection", b"close"))  # the unread rest of the body is never read
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
