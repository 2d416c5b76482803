"""Fuzz the API from its own OpenAPI schema (schemathesis): valid and invalid requests for every
operation, a bounded number each, against the real app and database. No answer may be a 5xx,
and every answer must be one the schema documents: its status, its media type and its body's
schema, errors (problem details) included.

The live stream is left out: for a run that is not finished it streams until the client
leaves, which a fuzzer never does (it has its own tests).

Schemathesis generates JSON a strict encoder accepts; Python's parser also takes NaN, Infinity,
lone surrogates ("\\udcff") and NUL ("\\u0000"), so a second pass puts those into generated bodies
(as values and as keys, inside nested objects too) and query strings and sends them as raw text;
then every list, and every run and sweep in it, must still answer: a row stored from such a body
would take them down (it once did, on SQLite and PostgreSQL)."""

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
                             "GET /api/studies/spaces", "GET /api/studies/presets", "GET /api/health/memory"}


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
    client = client_for(app_settings)
    poisoned = send_unencodable_values(client, operations)
    assert poisoned >= 5, poisoned  # operations with a body or a query string
    assert lists_answer(client, operations) >= 8


def lists_answer(client, operations) -> int:
    """Every list (a GET without path parameters), the spec-field queries of the runs list, and
    each run and sweep listed: none may answer 5xx. Returns how many requests were made."""
    paths = [operation.path for operation in operations
             if operation.method.upper() == "GET" and "{" not in operation.path]
    requests = [(path, {}) for path in paths]
    requests += [("/api/runs", {"format": "csv"}), ("/api/runs", {"sort": "lr"}), ("/api/runs", {"sort": "-encoder"}),
                 ("/api/runs", {"where": "lr>0"}), ("/api/runs", {"where": "metrics.val_loss>0"})]
    runs = client.get("/api/runs", params={"limit": 500}).json()["items"]
    sweeps = client.get("/api/sweeps", params={"limit": 500}).json()["items"]
    requests += [(f"/api/runs/{run['id']}", {}) for run in runs] + [(f"/runs/{run['id']}", {}) for run in runs[:20]]
    requests += [(f"/api/sweeps/{sweep['id']}", {}) for sweep in sweeps]
    requests += [(f"/api/sweeps/{sweep['id']}/summary", {}) for sweep in sweeps[:20]]
    for path, params in requests:
        response = client.get(path, params=params)
        assert response.status_code < 500, (path, params, response.status_code, response.text)
    return len(requests)


# Values Python's JSON parser accepts and JSON cannot carry, as JSON text; and as query text
# (the percent-encoded UTF-8 of a lone surrogate, and bytes that are no UTF-8 at all).
UNENCODABLE_JSON = ["NaN", "Infinity", "-Infinity", '"\\udcff"', '"a\\ud800b"', '["\\udfff", NaN]', '"a\\u0000b"',
                    '{"\\udcff": {"k\\u0000": ["\\ud800", {"ok": "a\\u0000"}]}}', '{"nested": {"\\u0000": 1}}']
# Keys a client may send inside any object of a body (free-form settings take any key).
UNENCODABLE_KEYS = ['"\\udcff"', '"k\\u0000"', '"\\ud800x"']
UNENCODABLE_QUERY = ["NaN", "Infinity", "-inf", "%ED%B3%BF", "%FF%FE", "1e999"]
POISON = "\u2603poison\u2603"  # a marker no generated value holds, replaced by the raw text
POISON_KEY = "\u2603key\u2603"


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


def _poison_key(value, choice: int):
    """`value` with a POISON_KEY added to one of its objects (nested ones too), chosen by `choice`."""
    objects = []

    def walk(node):
        if isinstance(node, dict):
            objects.append(node)
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(value)
    if objects:
        objects[choice % len(objects)][POISON_KEY] = "value"
    return value


def _body_schemas(client) -> dict[tuple[str, str], dict]:
    """(METHOD, path) → the JSON schema of its body (resolved one level)."""
    openapi = client.get("/openapi.json").json()
    schemas = {}
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in ref:
                schemas[(method.upper(), path)] = openapi["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
    return schemas


RUN = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}
KNOWN_GOOD = {"/api/runs": RUN}


def poison_free_form(client, operation, schema: dict | None) -> int:
    """For a body with free-form objects (an external run's `spec`): a generated body the API
    accepts, cut to its required members and those objects, then each of them holding every
    unencodable value, and every unencodable key (nested too), in turn. Random bodies seldom
    reach them (a generated body nearly always has an optional member refused on its own).
    Returns how many poisoned bodies were sent."""
    free_form = sorted(name for name, field in (schema or {}).get("properties", {}).items()
                       if field.get("type") == "object" and field.get("additionalProperties") is True)
    if not free_form:
        return 0
    base = None

    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def find_an_accepted_body(case):
        nonlocal base
        if base is not None or not isinstance(case.body, dict):
            return
        body = {name: value for name, value in case.body.items() if name in schema.get("required", [])}
        # Empty: a free-form object may still be checked against a model (a method's options).
        body.update({name: {} for name in free_form})
        response = client.request(case.method, case.formatted_path, content=json.dumps(body).encode(),
                                  headers={"content-type": "application/json"})
        if response.status_code < 300:
            base = (case.method, case.formatted_path, body)

    find_an_accepted_body()
    if base is None and operation.path in KNOWN_GOOD:  # a body naming a dataset that exists, seldom generated
        body = {**KNOWN_GOOD[operation.path], **{name: {} for name in free_form}}
        response = client.request(operation.method.upper(), operation.path, json=body)
        base = (operation.method.upper(), operation.path, body) if response.status_code < 300 else None
    assert base is not None, f"no generated body of {operation.label} was accepted"
    method, path, body = base
    sent = 0
    for name in free_form:
        poisons = [{"setting": POISON, "nested": {"setting": POISON}}] * len(UNENCODABLE_JSON)
        poisons += [{POISON_KEY: 1, "nested": {"list": [{POISON_KEY: "value"}]}}] * len(UNENCODABLE_KEYS)
        raws = [(raw, '"key"') for raw in UNENCODABLE_JSON] + [("1", key) for key in UNENCODABLE_KEYS]
        for poison, (raw, key) in zip(poisons, raws):
            text = json.dumps({**body, name: poison}).replace(json.dumps(POISON), raw)
            response = client.request(method, path, content=text.replace(json.dumps(POISON_KEY), key).encode(),
                                      headers={"content-type": "application/json"})
            assert response.status_code == 422, (method, path, text, response.status_code, response.text)
            sent += 1
    return sent


def send_unencodable_values(client, operations) -> int:
    """Generated valid requests with one body value or key, or a query value, swapped for NaN, an
    infinity, a lone surrogate or a NUL; none may answer 5xx (and free-form objects get each of
    them: poison_free_form). Returns how many operations took part."""
    fuzzed = 0
    body_schemas = _body_schemas(client)
    for operation in operations:
        @given(case=operation.as_strategy(GenerationMode.POSITIVE), choice=st.integers(0, 100),
               raw=st.sampled_from(UNENCODABLE_JSON), query_raw=st.sampled_from(UNENCODABLE_QUERY),
               key_raw=st.sampled_from(UNENCODABLE_KEYS))
        @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case, choice, raw, query_raw, key_raw):
            query = dict(case.query or {})
            url = case.formatted_path
            if query:
                name = sorted(query)[choice % len(query)]
                query.pop(name)
                url += f"?{name}={query_raw}"
            kwargs = {"params": query}
            if isinstance(case.body, (dict, list)) and case.body:
                body = json.loads(json.dumps(case.body))
                # A value, a key, or both (then the key's object may well be the body itself).
                body = _poison_key(body, choice // 3) if choice % 3 else body
                body = _poison_one(body, choice) if choice % 3 != 1 else body
                text = json.dumps(body).replace(json.dumps(POISON), raw).replace(json.dumps(POISON_KEY), key_raw)
                kwargs.update(content=text.encode(),
                              headers={"content-type": "application/json"})
            elif not query:
                return
            response = client.request(case.method, url, **kwargs)
            assert response.status_code < 500, (case.method, url, kwargs, response.status_code, response.text)

        no_server_error()
        poison_free_form(client, operation, body_schemas.get((operation.method.upper(), operation.path)))
        if operation.body or any(parameter.location == "query" for parameter in operation.iter_parameters()):
            fuzzed += 1
    return fuzzed
