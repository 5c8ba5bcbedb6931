"""Issue #19 fuzz acceptance: schemathesis generates requests from serve's own OpenAPI document
(valid ones and, in negative mode, ones that break the schema) against the real app behind the
guard and an API key. Every response must be no 5xx, a documented status with a documented
content type and body; schema-breaking data must get a 4xx and data the schema allows a 2xx (the
document carries this server's model id and max_tokens bound). Bounded: 60 examples an
operation and mode (a minute on two cores); `max_tokens_limit` is 64 so no request generates for long."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,  # noqa: E402
                                               positive_data_acceptance, response_schema_conformance,
                                               status_code_conformance)
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from serve_support import GUARD, in_process_client  # noqa: E402

KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def serve_schema(served_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "guard.yaml"
    path.write_text(GUARD)
    app = in_process_client(served_model_dir, path, api_key=KEY).app
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema):
    return {op.ok().label: op.ok() for op in schema.get_all_operations()}


def test_the_document_lists_every_route(serve_schema):
    assert set(_operations(serve_schema)) == {"GET /v1/models", "GET /health", "POST /v1/chat/completions",
                                              "POST /v1/completions"}


@pytest.mark.parametrize("label,mode", [(f"POST {path}", mode) for path in ("/v1/chat/completions", "/v1/completions")
                                        for mode in ("positive", "negative")] + [("GET /v1/models", "positive")])
def test_openapi_fuzz_no_5xx_and_every_response_documented(serve_schema, label, mode):
    # (schemathesis.pytest.from_fixture does not run under this pytest: hypothesis drives the strategy)
    operation = _operations(serve_schema)[label]

    @given(case=operation.as_strategy(GenerationMode(mode)))
    @settings(max_examples=60 if label.startswith("POST") else 5, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                               checks=CHECKS + ([positive_data_acceptance] if mode == "positive" else []))

    fuzz()
