"""Who gets in, what a hostile request can do: the API token, cross-site requests, request
size, error responses, and paths that try to leave their directory."""

from __future__ import annotations

import json
import logging
import os

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from backend.main import create_app
from backend.settings import Settings
from training.paths import PathOutsideRoot, inside

VALID = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
         "missing_rate": 0.9, "epochs": 3, "seed": 0}
TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture
def guarded(embedded_settings) -> Settings:
    return embedded_settings.model_copy(update={"api_token": SecretStr(TOKEN)})


@pytest.fixture
def client(client_for, guarded):
    return client_for(guarded)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def queue_files(settings) -> list[str]:
    return os.listdir(settings.broker_dir / "queue")


def test_with_a_token_set_an_unauthenticated_mutating_request_is_refused(client, guarded):
    for headers in ({}, bearer("wrong-token-wrong-token"), {"Authorization": TOKEN}):
        response = client.post("/api/runs", json=VALID, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert queue_files(guarded) == []
    assert client.post("/api/runs/1/cancel").status_code == 401
    created = client.post("/api/runs", json=VALID, headers=bearer())
    assert created.status_code == 201 and len(queue_files(guarded)) == 1
    assert client.post(f"/api/runs/{created.json()['id']}/cancel", headers=bearer()).status_code == 200


def test_with_a_token_set_reading_needs_it_too_except_health(client):
    for path in ["/api/runs", "/api/runs/1", "/api/datasets", "/openapi.json", "/docs", "/"]:
        refused = client.get(path, follow_redirects=False)
        assert refused.status_code == (303 if path in ("/docs", "/") else 401), path  # pages go to the sign-in
        assert client.get(path, headers=bearer()).status_code in (200, 404), path
    assert client.get("/api/health").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    page = client.get("/runs/1?x=1", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fruns%2F1%3Fx%3D1"
    assert client.get("/login").status_code == 200


def test_a_browser_signs_in_once_and_holds_a_session(client_for, guarded):
    browser = client_for(guarded)
    assert browser.post("/api/session", json={"token": "wrong"}).status_code == 401
    signed_in = browser.post("/api/session", json={"token": TOKEN})
    assert signed_in.status_code == 204
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and TOKEN.lower() not in cookie
    assert "secure" not in cookie  # plain HTTP by default (SECURE_COOKIES=false): the cookie must work there
    assert browser.get("/api/runs").status_code == 200
    assert browser.post("/api/runs", json=VALID).status_code == 201
    assert browser.get("/").status_code == 200
    browser.delete("/api/session")
    assert browser.get("/api/runs").status_code == 401
    # a cookie signed for another token does not open this one
    other = client_for(guarded.model_copy(update={"api_token": SecretStr("another-token-another-token")}))
    other.post("/api/session", json={"token": "another-token-another-token"})
    stranger = client_for(guarded)
    stranger.cookies.update(other.cookies)
    assert other.get("/api/runs").status_code == 200 and stranger.get("/api/runs").status_code == 401


def test_secure_cookies_marks_the_session_cookie_secure(client_for, guarded, monkeypatch):
    """SECURE_COOKIES=true, for a site served over HTTPS: the browser then never sends the
    session cookie over plain HTTP."""
    from http.cookies import SimpleCookie

    monkeypatch.setenv("SECURE_COOKIES", "true")
    assert Settings(var_dir=guarded.var_dir).secure_cookies is True
    browser = client_for(guarded.model_copy(update={"secure_cookies": True}))
    signed_in = browser.post("/api/session", json={"token": TOKEN})
    assert signed_in.status_code == 204
    [morsel] = SimpleCookie(signed_in.headers["set-cookie"]).values()
    assert morsel["secure"] is True and morsel["httponly"] is True and morsel["samesite"].lower() == "lax"


# Each is a way out of the site once the browser has parsed it: it drops tabs and line breaks,
# trims control characters and spaces at the ends, and reads a backslash as a slash.
REDIRECTS_OFF_SITE = ["https://evil.example/", "//evil.example", "/\\evil.example", "\\\\evil.example",
                      "/\t/evil.example/x", "/\n/evil.example", "/\r/evil.example", "/\r\n/evil.example",
                      "\t//evil.example", " //evil.example", "/\x00/evil.example", "/\\/evil.example",
                      "\\/evil.example", "/\t\\evil.example", "javascript:alert(1)", "/\x0b/evil.example"]


def test_sign_in_redirects_only_within_the_site(client):
    for target, expected in [("/runs/3", "/runs/3"), ("/runs?state=failed", "/runs?state=failed"),
                             *((way_out, "/") for way_out in REDIRECTS_OFF_SITE)]:
        page = client.get("/login", params={"next": target}).text
        assert f'data-next="{expected}"' in page, repr(target)


@pytest.mark.browser
def test_signing_in_with_a_tab_in_next_stays_on_the_site(guarded, start_server, page):
    base = start_server(guarded)
    page.goto(f"{base}/login?next=%2F%09%2Fevil.example%2Fx")
    page.fill("#f-token", TOKEN)
    page.click("#submit-sign-in")
    page.wait_for_url(f"{base}/")  # the runs page, not http://evil.example/x
    assert page.url == f"{base}/"


def test_sign_out_ends_the_session_even_for_a_copy_of_the_cookie(client_for, guarded):
    browser = client_for(guarded)
    assert browser.post("/api/session", json={"token": TOKEN}).status_code == 204
    copied = dict(browser.cookies)
    assert browser.get("/api/runs").status_code == 200
    assert browser.delete("/api/session").status_code == 204
    thief = client_for(guarded)
    thief.cookies.update(copied)
    assert thief.get("/api/runs").status_code == 401
    # a new sign-in opens a new session
    assert browser.post("/api/session", json={"token": TOKEN}).status_code == 204
    assert browser.get("/api/runs").status_code == 200


def test_sign_in_is_throttled_per_client(client_for, guarded):
    browser = client_for(guarded.model_copy(update={"sign_in_attempts_per_minute": 5}))
    statuses = [browser.post("/api/session", json={"token": f"wrong-{i}"}).status_code for i in range(5)]
    assert statuses == [401] * 5
    refused = browser.post("/api/session", json={"token": TOKEN})  # even the right one, for now
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert browser.get("/api/runs").status_code == 401


def test_a_request_for_another_host_name_is_refused(guarded, start_server):
    """DNS rebinding: a page of evil.example whose name now points at this server sends its
    own name as Host and as Origin, which agree; only the name gives it away."""
    import httpx2 as httpx

    base = start_server(guarded)
    port = base.rsplit(":", 1)[1]
    with httpx.Client(base_url=base, timeout=60) as http:
        run = http.post("/api/runs", json=VALID, headers=bearer()).json()
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            attack = http.delete(f"/api/runs/{run['id']}",
                                 headers={**bearer(), "Host": host, "Origin": f"http://{host}"})
            assert attack.status_code == 400, host
            assert http.get("/api/health", headers={"Host": host}).status_code == 400
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert http.get(f"/api/runs/{run['id']}", headers={**bearer(), "Host": host}).status_code == 200, host
        assert http.get(f"/api/runs/{run['id']}", headers=bearer()).status_code == 200


def test_trusted_hosts_are_required_beyond_localhost_and_honoured(embedded_settings):
    with pytest.raises(ValueError, match="TRUSTED_HOSTS is required"):
        Settings(host="0.0.0.0", var_dir=embedded_settings.var_dir)
    settings = Settings(host="0.0.0.0", trusted_hosts="missmod.example.org, *.lab.example",
                        var_dir=embedded_settings.var_dir)
    assert settings.trusted_hosts == ["missmod.example.org", "*.lab.example"]
    for host, status in [("missmod.example.org", 200), ("gpu1.lab.example:8000", 200), ("lab.example.evil", 400),
                         ("evil.example", 400), ("missmod.example.org.evil.example", 400)]:
        with TestClient(create_app(settings), base_url=f"http://{host}") as client:
            assert client.get("/api/health").status_code == status, host


@pytest.mark.parametrize("token_set", [False, True])
def test_cross_site_requests_cannot_change_anything(client_for, embedded_settings, guarded, token_set):
    settings = guarded if token_set else embedded_settings
    client = client_for(settings)
    if token_set:
        client.post("/api/session", json={"token": TOKEN})  # a signed-in browser: its cookie would be sent
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "https://evil.example"}, {"Origin": "null"}):
        response = client.post("/api/runs", json=VALID, headers=headers)
        assert response.status_code == 403 and response.json()["detail"] == "cross-site request refused", headers
        assert client.delete("/api/session", headers=headers).status_code == 403
    assert queue_files(settings) == []
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://testserver"}, {}):
        assert client.post("/api/runs", json=VALID, headers=headers).status_code == 201, headers
    assert client.get("/api/runs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # reading: CORS rules


def test_a_body_above_the_limit_is_413(client_for, embedded_settings):
    client = client_for(embedded_settings.model_copy(update={"max_request_bytes": 4096}))
    response = client.post("/api/runs", content=b'{"name": "' + b"x" * 10_000 + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/api/runs", json=VALID).status_code == 201


def test_an_unexpected_error_is_a_500_without_a_traceback(embedded_settings, caplog):
    app = create_app(embedded_settings)

    @app.get("/api/explode")
    def explode():
        raise RuntimeError("secret internals: /etc/missmod/password")

    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as client, caplog.at_level(logging.ERROR):
        response = client.get("/api/explode")
    assert response.status_code == 500
    body = response.text
    assert "reference" in body and "secret internals" not in body and "Traceback" not in body
    reference = response.json()["detail"].split("reference ")[1].split(" ")[0]
    assert any(reference in record.getMessage() for record in caplog.records)  # the server log has it


def test_pages_carry_a_content_security_policy(client_for, embedded_settings):
    client = client_for(embedded_settings)
    page = client.get("/runs/new")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    # The API docs start their scripts inline, from this server's files: a policy of their own,
    # under which nothing loads from another origin.
    docs = client.get("/docs").headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in docs and "default-src 'self'" in docs and "http" not in docs


def test_listening_beyond_localhost_without_a_token_warns_loudly(embedded_settings, caplog):
    with caplog.at_level(logging.WARNING, logger="missmod"):
        with TestClient(create_app(embedded_settings.model_copy(update={"host": "0.0.0.0"}))):
            pass
    assert any("NO API_TOKEN" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="missmod"):
        with TestClient(create_app(embedded_settings.model_copy(update={"host": "0.0.0.0", "api_token": SecretStr(TOKEN)}))):
            pass
    assert not any("NO API_TOKEN" in record.getMessage() for record in caplog.records)


def test_a_short_token_is_refused_at_start_up():
    with pytest.raises(ValueError, match="at least 16"):
        Settings(api_token="hunter2")


# --- paths ------------------------------------------------------------------------------


def test_inside_refuses_every_way_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("secret")
    (root / "link-out").symlink_to(tmp_path / "secret")
    (root / "link-in").symlink_to(root / "sub")
    assert inside(root, "sub/file.pt") == (root / "sub" / "file.pt").resolve()
    assert inside(root, "link-in/x") == (root / "sub" / "x").resolve()
    for escape in ["../secret", "sub/../../secret", "/etc/passwd", "link-out", "link-out/..", "..", "",
                   "sub\\..\\..\\secret", "a\x00b"]:
        with pytest.raises(PathOutsideRoot):
            inside(root, escape)


def test_a_path_escape_through_the_artifact_api_is_refused(client_for, embedded_settings, tmp_path):
    client = client_for(embedded_settings)
    run_id = client.post("/api/runs", json=VALID).json()["id"]
    run_dir = embedded_settings.artifact_dir / "runs" / str(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"weights")
    (run_dir / ".checkpoint.pt.123.tmp").write_bytes(b"half-written")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    (run_dir / "link").symlink_to(secret)
    (embedded_settings.artifact_dir / "runs" / "other.txt").write_text("another run's file")

    listing = client.get(f"/api/runs/{run_id}/artifacts").json()
    assert listing == [{"path": "checkpoint.pt", "size": 7}]
    assert client.get(f"/api/runs/{run_id}/artifacts/checkpoint.pt").content == b"weights"
    for attempt in ["..%2Fother.txt", "%2E%2E/other.txt", "..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "link",
                    ".checkpoint.pt.123.tmp", "sub%5C..%5C..%5Cother.txt"]:
        response = client.get(f"/api/runs/{run_id}/artifacts/{attempt}")
        assert response.status_code in (400, 404), (attempt, response.status_code)
        assert b"do not serve me" not in response.content and b"another run" not in response.content
    assert client.get(f"/api/runs/{run_id}/artifacts/%2E%2E%2Fother.txt").status_code == 400


def test_a_dataset_name_cannot_point_at_a_file(client_for, embedded_settings):
    client = client_for(embedded_settings)
    features = embedded_settings.data_dir / "features"
    features.mkdir(parents=True)
    for name in ["../../../etc/passwd", "/etc/passwd", "features/../x"]:
        response = client.post("/api/runs", json={**VALID, "dataset": name})
        assert response.status_code == 422 and ["body", "dataset"] in [e["loc"] for e in response.json()["detail"]]


@pytest.mark.services
def test_text_postgresql_cannot_store_is_a_422_not_a_500(service_settings, client_for):
    client = client_for(service_settings)
    response = client.post("/api/runs", json={**VALID, "name": "a\x00b"})
    assert response.status_code == 422 and ["body", "name"] in [e["loc"] for e in response.json()["detail"]]
    for parameter in ("method", "dataset"):
        assert client.get("/api/runs", params={parameter: "a\x00b"}).status_code == 422
    assert client.post("/api/runs", json={**VALID, "name": "tabs\tare control characters too"}).status_code == 422
    assert client.get("/api/runs").json()["total"] == 0


# --- input JSON cannot hold: NaN, infinities, lone surrogates ---------------------------------

RUN_JSON = '{"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1'
HOSTILE_BODIES = [  # (path, method, JSON text, the field at fault)
    ("/api/runs", "POST", RUN_JSON + ', "lr": NaN}', "lr"),
    ("/api/runs", "POST", RUN_JSON.replace("0.5", "Infinity") + "}", "missing_rate"),
    ("/api/runs", "POST", RUN_JSON + ', "weight_decay": -Infinity}', "weight_decay"),
    ("/api/runs", "POST", RUN_JSON + ', "name": "a\\udcffb"}', "name"),
    ("/api/runs", "POST", RUN_JSON.replace('"digits"', '"\\ud800"') + "}", "dataset"),
    ("/api/sweeps", "POST", RUN_JSON.replace("0.5", "[0.5, NaN]") + "}", "missing_rate"),
    ("/api/sweeps", "POST", RUN_JSON.replace("0.5", "[0.1, 0.5]") + ', "lr": [0.1, Infinity]}', "lr"),
    ("/api/sweeps/preview", "POST", RUN_JSON.replace('"mle"', '["mle", "\\udcff"]') + "}", "method"),
    ("/api/sweeps/preview", "POST", RUN_JSON + ', "name": "\\udcff"}', "name"),
    ("/api/runs/1", "PATCH", '{"note": "\\ud800"}', "note"),
    ("/api/runs/1", "PATCH", '{"tags": ["ok", "\\udfff"]}', "tags"),
    ("/api/presets/table1/preview", "POST", '{"dataset": "digits", "epochs": NaN}', "epochs"),
]


@pytest.mark.parametrize("path, method, body, field", HOSTILE_BODIES)
def test_non_finite_numbers_and_lone_surrogates_are_a_422_naming_the_field(client_for, embedded_settings,
                                                                            path, method, body, field):
    client = client_for(embedded_settings)
    assert client.post("/api/runs", json=VALID).status_code == 201
    response = client.request(method, path, content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, (response.status_code, response.text)
    assert ["body", field] in [error["loc"][:2] for error in response.json()["detail"]], response.text
    assert client.get("/api/runs").json()["total"] == 1  # nothing half-written


def test_a_token_with_a_lone_surrogate_is_a_422_at_sign_in(client):
    response = client.post("/api/session", content=b'{"token": "\\udcff"}', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "token"]


def test_every_request_body_refuses_what_cannot_be_stored(client_for, embedded_settings):
    """Each JSON body the API takes is a CleanInput (NaN, infinities, lone surrogates and NUL
    refused in values and keys at any depth): a new route's body cannot forget it. The fuzz test
    (tests/app/test_fuzz.py) sends them."""
    from backend.api.params import CleanInput

    def subclasses(model):
        for sub in model.__subclasses__():
            yield sub
            yield from subclasses(sub)

    checked = {model.__name__ for model in subclasses(CleanInput)}
    openapi = client_for(embedded_settings).get("/openapi.json").json()
    bodies = {(method.upper(), path): operation["requestBody"]["content"]["application/json"]["schema"].get("$ref")
              for path, operations in openapi["paths"].items() for method, operation in operations.items()
              if "application/json" in operation.get("requestBody", {}).get("content", {})}
    assert len(bodies) >= 8
    # A body the route reads itself (JSON or .npz: a prediction) is no model; its reader applies
    # the same check, tested below and against a real model in tests/runs/test_predict.py.
    read_by_hand = {route for route, ref in bodies.items() if ref is None}
    assert read_by_hand == {("POST", "/api/runs/{run_id}/predict")}
    unchecked = {route: ref for route, ref in bodies.items()
                 if ref is not None and ref.rsplit("/", 1)[-1] not in checked}
    assert unchecked == {}


@pytest.mark.parametrize("text", ['{"x": [[1, NaN]]}', '{"x": [["a\\u0000b"]]}', '{"\\udcff": [[1]]}',
                                  '{"x": [[1]], "y\\u0000": [[1]]}', '{"x": ["\\ud800"]}'])
def test_a_prediction_body_refuses_what_cannot_be_stored_before_echoing_it(text):
    """The prediction body's own reader (backend/runs/serving.py): NaN, a NUL or a lone surrogate
    in a key or a value is a 422 naming where, never echoed back (which could not be encoded)."""
    from backend.refused import Refused
    from backend.runs.serving import read_inputs

    manifest = {"x_modality": "top", "y_modality": "bottom"}
    with pytest.raises(Refused) as refused:
        read_inputs(text.encode(), "application/json", manifest, 10)
    assert refused.value.errors[0]["loc"][0] == "body"
    json.dumps(refused.value.errors, ensure_ascii=False, default=str).encode("utf-8")  # the answer can be written


def test_a_422_echoes_a_huge_input_cut_short(client_for, embedded_settings):
    """A bulk request of 100,000 ids was echoed back whole (589 KB) in its 422 (issue 20)."""
    client = client_for(embedded_settings)
    too_many = client.post("/api/runs/bulk-retry", json={"ids": list(range(1, 100_001))})
    assert too_many.status_code == 422 and len(too_many.content) < 5_000, len(too_many.content)
    issue = too_many.json()["detail"][0]
    assert issue["loc"] == ["body", "ids"] and issue["input"][:3] == [1, 2, 3]
    assert issue["input"][-1].endswith("more items)")
    all_wrong = client.post("/api/runs/bulk-cancel", json={"ids": ["x"] * 9_000})
    assert all_wrong.status_code == 422 and len(all_wrong.content) < 20_000, len(all_wrong.content)
    detail = all_wrong.json()["detail"]
    assert len(detail) == 51 and detail[-1]["msg"] == "and 8,950 more invalid inputs, not listed"
    long_name = client.post("/api/runs", json={**VALID, "name": "n" * 100_000})
    assert long_name.status_code == 422 and len(long_name.content) < 5_000
    assert long_name.json()["detail"][0]["input"].endswith("(100,000 characters)")
    small = client.post("/api/runs", json={**VALID, "missing_rate": 7})  # a small input is echoed as it was
    assert small.json()["detail"][0]["input"] == 7
