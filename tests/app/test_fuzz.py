"""Fuzz the API from its own OpenAPI schema (schemathesis): valid and invalid requests for every
operation, a bounded number each, against the real app and database; no answer may be a 5xx.

The live stream is left out: for a run that is not finished it streams until the client
leaves, which a fuzzer never does (it has its own tests)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from backend.main import create_app

pytestmark = pytest.mark.fuzz

EXAMPLES_PER_OPERATION_AND_MODE = 25
OPERATIONS_WITHOUT_INPUTS = {"GET /api/health", "DELETE /api/session", "GET /api/datasets", "GET /api/methods",
                             "GET /api/presets", "GET /api/choices"}


@pytest.mark.parametrize("backend", ["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def test_no_request_makes_the_api_fail(backend, request, client_for):
    """On SQLite and on PostgreSQL, whose limits differ (integer sizes, NUL characters)."""
    app_settings = request.getfixturevalue(backend)
    client_for(app_settings).post("/api/runs", json={  # a run to find, so ids hit real rows too
        "dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1})
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))
    operations = [result.ok() for result in schema.exclude(path_regex=r".*/stream$").get_all_operations()]
    assert len(operations) >= 10
    fuzzed, without_invalid_inputs = [], []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                case.call_and_validate(checks=[not_a_server_error])

            try:
                no_server_error()
            except Unsatisfiable:
                # Negative mode has nothing to break in an operation without inputs (GET /api/health).
                assert mode is GenerationMode.NEGATIVE, operation.label
                without_invalid_inputs.append(operation.label)
                continue
            fuzzed.append(f"{operation.label} {mode.value}")
    assert len(fuzzed) + len(without_invalid_inputs) == 2 * len(operations)
    # Only operations that take no input at all cannot be sent an invalid one.
    assert set(without_invalid_inputs) <= OPERATIONS_WITHOUT_INPUTS, without_invalid_inputs
