"""The request bodies ``rlhfkit serve`` accepts, as strict pydantic models: a value of the wrong JSON
type is refused (``"stream": "false"`` is not a boolean), never coerced, and an unknown field is
refused. The same models are the OpenAPI document's request schemas (``openapi_components``), so a
client, or a fuzzer, sees exactly what the server accepts.

Ranges that depend on the server (``max_tokens`` at most ``--max_tokens_limit``, the model's
name, the context length) are checked after these, in ``serve.Server.parse``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


Text = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    # one model for every role: a discriminated union (oneOf) confuses schema-driven fuzzers
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None  # null: empty text (an assistant turn to continue)
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Common(_Strict):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=1e-9, le=1, allow_inf_nan=False)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-2**63, le=2**63 - 1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # accepted only at their neutral values (serve.NEUTRAL): no silent partial support
    n: Literal[1] | None = None
    presence_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    echo: Literal[False] | None = None

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, body):
        # JSON Schema's "integer" includes 5.0, which Python's json reads as a float: take it as 5
        if isinstance(body, dict):
            for key in ("max_tokens", "max_completion_tokens", "seed"):
                value = body.get(key)
                if type(value) is float and value.is_integer() and abs(value) < 2**63:
                    body = {**body, key: int(value)}
        return body


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]


class CompletionRequest(_Common):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]


def _param(error: dict) -> str:
    """A pydantic error's location as a dotted field path, without union-member tags ("str",
    "list[str]", "constrained-str")."""
    loc = list(error["loc"])
    tags = ("str", "int", "float", "bool", "none", "list", "dict")
    fields = [str(p) for p in loc if isinstance(p, int) or not ("[" in p or "-" in p or p in tags)]
    return ".".join(fields)


def first_error(e: ValidationError) -> tuple[str, str]:
    """(field path, one-line message) for the first field a validation error names."""
    errors = e.errors(include_url=False, include_input=False)
    param = _param(errors[0])
    messages = list(dict.fromkeys(err["msg"] for err in errors if _param(err) == param))
    return param, f"'{param}': " + " or ".join(m[0].lower() + m[1:] for m in messages).replace("\n", " ")


def openapi_components(model_name: str, max_tokens: int) -> dict:
    """The request models as OpenAPI component schemas (``#/components/schemas/NAME``), with this
    server's own bounds: its model id and its largest max_tokens."""
    schemas = {}
    for model in (ChatRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        props = schema["properties"]
        props["model"]["anyOf"][0]["enum"] = [model_name]
        for key in ("max_tokens", "max_completion_tokens"):
            props[key]["anyOf"][0]["maximum"] = max_tokens
        schemas[model.__name__] = schema
    return schemas


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": "null"}}}}}
_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
          "properties": {k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens",
                                                                         "total_tokens")}}
_FINISH = {"enum": ["stop", "length", "content_filter"]}
_CHOICE = {"ChatCompletion": {"type": "object", "required": ["index", "message", "finish_reason"], "properties": {
               "index": {"const": 0}, "finish_reason": _FINISH,
               "message": {"type": "object", "required": ["role", "content"],
                           "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}},
           "Completion": {"type": "object", "required": ["index", "text", "finish_reason"], "properties": {
               "index": {"const": 0}, "text": {"type": "string"}, "finish_reason": _FINISH}}}


# one server-sent event: `data:` a JSON chunk (or [DONE]); schemathesis validates each event as an object
_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


AUTH_RESPONSES = {"401": _error_response("missing or wrong API key (when the server has one)")}


def openapi_extra(request: str, response: str) -> dict:
    """The OpenAPI operation fields of a completion route: its request schema and every response."""
    ok = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
        "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "choices": {"type": "array", "minItems": 1, "maxItems": 1,
                                                 "items": _CHOICE[response]}, "usage": _USAGE}}
    return {"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{request}"}}}},
            "responses": {"200": {"description": "the completion (JSON), or server-sent events with stream: true",
                                  "content": {"application/json": {"schema": ok},
                                              "text/event-stream": {"schema": _EVENT}}},
                          "400": _error_response("a malformed request; `param` names the field"),
                          "404": _error_response("an unknown model"),
                          "413": _error_response("the body or the prompt is over this server's limits"),
                          **AUTH_RESPONSES}}
