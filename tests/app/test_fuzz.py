"""Schema-driven fuzzing: schemathesis against the app's own OpenAPI schema, in-process (ASGI).

Every operation of the schema is fuzzed with schema-valid bodies (and, for those that take a
body, schema-invalid ones), then run through schemathesis's coverage phase (boundary values,
missing and wrong-typed fields, unexpected methods). Every answer must be free of 5xx and match
the schema the operation documents for its status and media type (the event stream's events
included); every 4xx must be the error envelope; every schema-valid request must be answered
(positive data acceptance: the served schema states the server's rules).
``RNNLM_FUZZ_EXAMPLES`` sets the examples per operation and mode (50 here; ``make fuzz``
raises it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTERED
from schemathesis.core.result import Ok
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi import checks as openapi_checks

from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("RNNLM_FUZZ_EXAMPLES", "50"))
ENVELOPE = {"error", "error_type", "param", "details"}
OPENAI_ENVELOPE = {"message", "type", "param", "code"}


def error_envelope(ctx: Any, response: Any, case: Any) -> None:
    """A custom check: every 4xx the app answers (HEAD has no body) is the error envelope,
    OpenAI's under /v1/."""
    if 400 <= response.status_code < 500 and case.method.upper() != "HEAD":
        body = json.loads(response.content)
        if case.path.startswith("/v1/"):
            assert isinstance(body, dict) and set(body) == {"error"}, body
            assert set(body["error"]) == OPENAI_ENVELOPE, body
            body = {"error": body["error"]["message"], "error_type": body["error"]["code"]}
        else:
            assert isinstance(body, dict) and set(body) == ENVELOPE, body
        assert body["error"] and body["error_type"], body
        assert "Traceback" not in body["error"]


# Every check schemathesis has (what `st run --checks all` runs; those for stateful links and
# auth find nothing to act on), and the envelope. positive_data_acceptance holds the served
# schema to the server: it states each limit of the running Settings and weights
# (app.schema_rules), the "exactly one of" and if-then rules and the accepted constants.
assert openapi_checks.positive_data_acceptance in REGISTERED.get_all()  # the OpenAPI ones loaded
CHECKS = [*REGISTERED.get_all(), error_envelope]


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in the app's schema (building it loads no weights)."""
    spec = create_app(Settings()).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


OPERATIONS = _operations()
WITH_BODY = [(m, p) for m, p in OPERATIONS if m == "POST"]
IDS = [f"{m} {p}" for m, p in OPERATIONS]


@pytest.fixture(scope="module")
def api_schema(tiny_weights: Path) -> Iterator[schemathesis.BaseSchema]:
    """The app's schema loaded through its ASGI interface; schemathesis runs the lifespan."""
    app = create_app(Settings(weights=tiny_weights))
    config = schemathesis.config.SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    yield schema
    shutdown_lifespans()


def _operation(schema: schemathesis.BaseSchema, method: str, path: str) -> Any:
    """The schema's APIOperation for method and path."""
    return schema[path][method]


def _fuzz(schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode) -> int:
    """Run EXAMPLES generated cases of one operation through CHECKS; return how many ran."""
    operation = _operation(schema, method, path)
    ran = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    run()
    return ran


def test_every_operation_of_the_schema_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    """The collected operations are exactly the served schema's (a new route cannot be missed)."""
    results = list(api_schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), results  # every operation is well-formed
    served = {(r.ok().method.upper(), r.ok().path) for r in results if isinstance(r, Ok)}
    assert served == set(OPERATIONS)
    assert len(OPERATIONS) >= 11


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_schema_valid_requests(api_schema: schemathesis.BaseSchema, method: str, path: str) -> None:
    ran = _fuzz(api_schema, method, path, GenerationMode.POSITIVE)
    # An operation without parameters or body has exactly one request to make.
    assert ran >= (EXAMPLES if method == "POST" else 1)


@pytest.mark.parametrize(("method", "path"), WITH_BODY, ids=[f"{m} {p}" for m, p in WITH_BODY])
def test_schema_invalid_requests(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    """Bodies that break the schema (wrong types, out of range, not JSON) get a 4xx, never a 5xx."""
    assert _fuzz(api_schema, method, path, GenerationMode.NEGATIVE) >= EXAMPLES


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_coverage_phase(api_schema: schemathesis.BaseSchema, method: str, path: str) -> None:
    """Deterministic boundary and negative cases, and the methods an operation does not allow."""
    operation = _operation(api_schema, method, path)
    cases = list(
        api_schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=api_schema.config.generation,
        )
    )
    statuses = set()
    for case in cases:
        response = case.call()
        statuses.add(response.status_code)
        case.validate_response(response, checks=CHECKS)
    # the unexpected-method cases ran: schemathesis makes them once a path, with the path's
    # first operation (GET / before POST /)
    if next(m for m, p in OPERATIONS if p == path) == method:
        assert 405 in statuses, statuses
    assert any(200 <= s < 300 for s in statuses)
