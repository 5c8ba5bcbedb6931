"""What the annotation server accepts: one request schema for the JSON API and the page forms.

The form routes validate with these same models (``Model.model_validate`` on the form fields), so a
browser post meets the API's limits. Every id and version is range-checked here (a larger integer
used to overflow inside the database driver: a 500), and no text may hold what a database cannot
store. ``API_ERRORS`` documents every refusal in the OpenAPI document (schemathesis checks it).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .db import storable

# The largest id or version either database holds: PostgreSQL's `integer` is 32-bit. Larger values
# were a 500 (an overflow inside the database driver); the request schema now refuses them (422).
DB_INT_MAX = 2**31 - 1


def _storable(text: str) -> str:
    if not storable(text):
        raise ValueError("must not contain NUL characters or unpaired surrogates")
    return text


TaskId = Annotated[int, Field(ge=1, le=DB_INT_MAX, description="`task_id` as GET /api/next returned it")]
Text = Annotated[str, AfterValidator(_storable)]


class _Body(BaseModel):
    # strict: the JSON API takes an integer id as an integer (lax mode read `true` as task 1); the
    # page forms, whose fields are all text, validate with ``strict=False``
    model_config = ConfigDict(extra="forbid", strict=True)


# One schema for the JSON API and the page forms: the form routes validate with these models too.
class LabelIn(_Body):
    # a tie has no strength: said in the document too, so generated clients (and fuzzers) know it
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"properties": {"choice": {"enum": ["a", "b"]}}}, {"properties": {"strength": {"type": "null"}}}]})

    task_id: TaskId
    choice: Literal["a", "b", "tie"] = Field(description='"a" = the response GET /api/next returned as `a`')
    strength: Literal["slightly_better", "better", "much_better"] | None = Field(
        None, description="how much better the chosen response is (not for a tie); sets the exported margin "
                          "(1/3, 2/3, 1)")
    comment: Text | None = Field(None, max_length=5000)

    @field_validator("strength")
    @classmethod
    def _no_strength_for_a_tie(cls, strength, info):
        if strength is not None and info.data.get("choice") == "tie":
            raise ValueError("strength says how much better the chosen response is; a tie has none")
        return strength


class DemonstrationIn(_Body):
    task_id: TaskId
    completion: Text = Field(min_length=1, max_length=100_000, pattern=r"\S", description="not only whitespace")


class SkipIn(_Body):
    task_id: TaskId


class AckIn(_Body):
    version: int = Field(ge=0, le=DB_INT_MAX, description="the guidelines version that was read")


class GuidelinesIn(_Body):
    markdown: Text = Field(max_length=200_000)


class TasksIn(_Body):
    records: list[dict] = Field(min_length=1, max_length=10_000, description="pairs as `rlhfkit annotate import` "
                                "reads them: {id, prompt, response_a, response_b} with optional metadata, gold")
    overlap: int = Field(3, ge=1, le=1000, description="K: different annotators per pair")
    gold_rate: float | None = Field(None, ge=0, le=1, description="share of each annotator's tasks that are gold "
                                                                  "pairs; null leaves it unchanged")
    source: Text = Field(min_length=1, max_length=500, description="batch name (a pipeline round); "
                                                                   "`?source=` of stats and export select it")


Source = Annotated[str | None, Field(None, min_length=1, max_length=500,
                                     description="only the tasks imported under this name (POST /api/tasks)")]


class ErrorOut(BaseModel):
    detail: str = Field(description="one line saying what was wrong")


class ValidationErrorOut(ErrorOut):
    errors: list[dict] = Field([], description="each problem: `loc` (where, e.g. body.task_id) and `msg`")


# Documented on every /api route (OpenAPI; schemathesis checks the app answers only these).
API_ERRORS = {400: {"model": ErrorOut, "description": "the body could not be parsed (not UTF-8 or not JSON)"},
              401: {"model": ErrorOut, "description": "missing or invalid bearer token"},
              403: {"model": ErrorOut, "description": "not allowed for the caller (role, or not their task)"},
              404: {"model": ErrorOut, "description": "no such task, or nothing to undo"},
              409: {"model": ErrorOut, "description": "conflicts with the task's state (skipped, answered, expired)"},
              422: {"model": ValidationErrorOut, "description": "bad request body or parameter"}}


def one_line(e: ValidationError | RequestValidationError, drop: tuple = ()) -> str:
    """``field: message; ...`` for every problem, the location without the parts in ``drop``."""
    return "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()) if x not in drop)}: {err.get('msg', '')}"
                     for err in e.errors()) or "bad request"


def _query_names(dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take: a typo (``?mdoe=per_annotator``) would
    otherwise silently give the default."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if route is not None else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError([{"loc": ("query", name), "msg": "unknown query parameter",
                                       "type": "extra_forbidden"} for name in unknown[:5]])
