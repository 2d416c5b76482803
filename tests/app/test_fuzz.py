"""Fuzz the API from its own OpenAPI schema (schemathesis): valid and invalid requests for every
operation, a bounded number each, against the real app and database. No answer may be a 5xx,
and every answer must be one the schema documents: its status, its media type and its body's
schema, errors (problem details) included.

The live stream is left out: for a run that is not finished it streams until the client
leaves, which a fuzzer never does (it has its own tests).

Schemathesis generates JSON a strict encoder accepts; Python's parser also takes NaN, Infinity
and lone surrogates ("\\udcff"), so a second pass puts those into generated bodies and query
strings and sends them as raw text."""

from __future__ import annotations

import pytest
import schemathesis
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from backend.main import create_app

pytestmark = pytest.mark.fuzz

EXAMPLES_PER_OPERATION_AND_MODE = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS_WITHOUT_INPUTS = {"GET /api/health", "DELETE /api/session", "GET /api/datasets", "GET /api/methods",
                             "GET /api/presets", "GET /api/choices", "GET /api/workers", "GET /api/workers/queue",
                             "GET /api/studies/spaces", "GET /api/studies/presets"}


@pytest.mark.parametrize("backend", ["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def test_no_request_makes_the_api_fail(backend, request, client_for):
    """On SQLite and on PostgreSQL, whose limits differ (integer sizes, NUL characters)."""
    app_settings = request.getfixturevalue(backend)
    client_for(app_settings).post("/api/runs", json={  # a run to find, so ids hit real rows too
        "dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1})
    # Its requests name the host "testserver" (Starlette's test client), trusted as a deployment trusts its name.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(app_settings.model_copy(update={"trusted_hosts": ["testserver"]})))
    operations = [result.ok() for result in schema.exclude(path_regex=r".*/stream$").get_all_operations()]
    assert len(operations) >= 10
    fuzzed, without_invalid_inputs = [], []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                case.call_and_validate(checks=CHECKS)

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
    poisoned = send_unencodable_values(client_for(app_settings), operations)
    assert poisoned >= 5, poisoned  # operations with a body or a query string


# Values Python's JSON parser accepts and JSON cannot carry, as JSON text; and as query text
# (the percent-encoded UTF-8 of a lone surrogate, and bytes that are no UTF-8 at all).
UNENCODABLE_JSON = ["NaN", "Infinity", "-Infinity", '"\\udcff"', '"a\\ud800b"', '["\\udfff", NaN]']
UNENCODABLE_QUERY = ["NaN", "Infinity", "-inf", "%ED%B3%BF", "%FF%FE", "1e999"]
POISON = "\u2603poison\u2603"  # a marker no generated value holds, replaced by the raw text


def _poison_one(value, choice: int):
    """`value` (a generated JSON body) with one leaf, chosen by `choice`, replaced by POISON."""
    leaves = []

    def walk(node, setter):
        if isinstance(node, dict) and node:
            for key in list(node):
                walk(node[key], lambda new, key=key, node=node: node.__setitem__(key, new))
        elif isinstance(node, list) and node:
            for index in range(len(node)):
                walk(node[index], lambda new, index=index, node=node: node.__setitem__(index, new))
        else:
            leaves.append(setter)

    holder = [value]
    walk(value, lambda new: holder.__setitem__(0, new))
    leaves[choice % len(leaves)](POISON)
    return holder[0]


def send_unencodable_values(client, operations) -> int:
    """Generated valid requests with one body value or query value swapped for NaN, an infinity
    or a lone surrogate; none may answer 5xx. Returns how many operations took part."""
    fuzzed = 0
    for operation in operations:
        @given(case=operation.as_strategy(GenerationMode.POSITIVE), choice=st.integers(0, 100),
               raw=st.sampled_from(UNENCODABLE_JSON), query_raw=st.sampled_from(UNENCODABLE_QUERY))
        @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case, choice, raw, query_raw):
            query = dict(case.query or {})
            url = case.formatted_path
            if query:
                name = sorted(query)[choice % len(query)]
                query.pop(name)
                url += f"?{name}={query_raw}"
            kwargs = {"params": query}
            if isinstance(case.body, (dict, list)) and case.body:
                text = json.dumps(_poison_one(json.loads(json.dumps(case.body)), choice))
                kwargs.update(content=text.replace(json.dumps(POISON), raw).encode(),
                              headers={"content-type": "application/json"})
            elif not query:
                return
            response = client.request(case.method, url, **kwargs)
            assert response.status_code < 500, (case.method, url, kwargs, response.status_code, response.text)

        no_server_error()
        if operation.body or any(parameter.location == "query" for parameter in operation.iter_parameters()):
            fuzzed += 1
    return fuzzed
