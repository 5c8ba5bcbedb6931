"""The FastAPI app of ``rlhfkit serve`` (the ``serve`` extra): the /v1 routes over a ``serve.Server``,
streaming as server-sent events, the OpenAPI document with the request schemas, and errors in
OpenAI's shape. Imported only once ``run_serve`` has checked that the extra is installed."""
# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation of
# the route functions (a string annotation to a name imported inside create_app would turn into a
# required query parameter, and every request into a 422).

import asyncio
import json
import logging
import re
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .serve_gate import RequestError, RequestGate, json_body
from .serve_schema import AUTH_RESPONSES, openapi_components, openapi_extra

log = logging.getLogger("rlhfkit.serve")


def _error(e: RequestError):
    return JSONResponse({"error": {"message": str(e), "type": e.kind, "param": e.param, "code": None}},
                        status_code=e.status)


def _pieces(text: str) -> list[str]:
    """Word pieces (each word with the whitespace before it) for streaming."""
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


def create_app(server, api_key: str = ""):
    """The FastAPI app over ``server`` (a ``serve.Server``); with ``api_key`` every /v1 route needs ``Authorization: Bearer <api_key>``."""
    app = FastAPI(title="rlhfkit serve", version="1")
    app.state.server = server
    app.add_middleware(RequestGate, api_key=api_key, max_bytes=server.max_request_bytes)

    @app.get("/v1/models", openapi_extra={"responses": AUTH_RESPONSES})
    def models():
        return {"object": "list", "data": [{"id": server.name, "object": "model", "created": server.created,
                                            "owned_by": "rlhfkit"}]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    async def handle(request: Request, chat: bool):
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            req = server.parse(json_body(await request.body()), chat)
            result = await run_in_threadpool(server.complete, req, request_id)
        except RequestError as e:
            log.info("request %s refused: %s", request_id, e)
            return _error(e)
        created = int(time.time())
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
        if not req["stream"]:
            choice = ({"index": 0, "message": {"role": "assistant", "content": result["text"]}, "logprobs": None,
                       "finish_reason": result["finish_reason"]} if chat else
                      {"index": 0, "text": result["text"], "logprobs": None, "finish_reason": result["finish_reason"]})
            return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": server.name, "choices": [choice], "usage": usage}
        return StreamingResponse(_stream(request_id, created, chat, result, usage, req), media_type="text/event-stream")

    async def _stream(request_id, created, chat, result, usage, req):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | str, finish=None) -> str:
            choice = ({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish} if chat else
                      {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish})
            return "data: " + json.dumps({"id": request_id, "object": kind, "created": created,
                                          "model": server.name, "choices": [choice]}) + "\n\n"

        if chat:
            yield chunk({"role": "assistant", "content": ""})
        for piece in _pieces(result["text"]):
            yield chunk({"content": piece} if chat else piece)
            await asyncio.sleep(0)
        yield chunk({} if chat else "", result["finish_reason"])
        if req["include_usage"]:
            yield "data: " + json.dumps({"id": request_id, "object": kind, "created": created, "model": server.name,
                                         "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions", openapi_extra=openapi_extra("ChatRequest", "ChatCompletion"))
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions", openapi_extra=openapi_extra("CompletionRequest", "Completion"))
    async def completions(request: Request):
        return await handle(request, chat=False)

    _document_models(app, server)
    return app


def _document_models(app, server) -> None:
    """Put the request models in the OpenAPI document, as components the routes' $refs point to."""
    base_openapi = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components(server.name, server.max_tokens_limit))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
