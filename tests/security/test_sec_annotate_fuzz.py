"""Issue #19, fuzz acceptance (annotation server half): schemathesis against the app's own OpenAPI
document. Every /api operation gets generated requests, valid ones and invalid ones (schemathesis'
positive and negative modes), as an annotator and as the admin; every response must be no 5xx, a
documented status code and content type, and match its documented schema (``call_and_validate``).

Bounded: EXAMPLES per operation, mode and role, on SQLite through the ASGI app (no network)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from rlhfkit.annotate.app import create_app
from rlhfkit.annotate.records import TaskRecord
from rlhfkit.annotate.store import Store

EXAMPLES = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("schemathesis") / "fuzz.db"))
    store.import_tasks([TaskRecord(f"p{i}", "pair", f"prompt {i}", f"good {i}", f"bad {i}") for i in range(30)]
                       + [TaskRecord(f"d{i}", "demonstration", f"write {i}") for i in range(10)], overlap=2,
                       gold_rate=0.0)
    tokens = {role: store.add_user(role, role, "secret-pw")[1] for role in ("annotator", "admin")}
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(store)), tokens
    store.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", ["annotator", "admin"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(world, role, mode):
    schema, tokens = world
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every /api route is in the document
    calls = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            calls.append(case.call_and_validate(headers={"Authorization": f"Bearer {tokens[role]}"}).status_code)

        fuzz()
    print(f"{role}, {mode}: {len(calls)} requests over {len(operations)} operations")
    assert len(calls) >= 2 * len(operations)
