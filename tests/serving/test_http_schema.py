"""schemathesis over the service's own OpenAPI spec, against the running server: generated requests
(valid and invalid) never get a 5xx, and every response matches the documented status codes and
schemas. Bounded: a few examples per operation, so the run stays within seconds."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

OPERATIONS = [
    ("POST", "/v1/recommend"), ("POST", "/v1/search"), ("POST", "/v1/similar"), ("POST", "/v1/score"),
    ("POST", "/v1/explain"), ("GET", "/v1/model"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_operation_is_covered(api_schema):
    documented = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert documented == set(OPERATIONS) | {("POST", "/admin/reload")}  # reload: tests/serving/test_http_reload.py


# Negative examples (invalid bodies) for the operations that take a body; the GETs take nothing to break.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_openapi_spec_holds_against_the_server(api_schema, server, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        # Schema-valid requests may still name ids the catalogue lacks: a documented 422, not a fault.
        case.call_and_validate(base_url=server.url, headers=server.headers, excluded_checks=[positive_data_acceptance])

    check()
