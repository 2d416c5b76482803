"""Method plugins with real processes (docs/methods.md): the API, workers and a browser, each with
the plugins installed (pip --target, on its PYTHONPATH) or not. The example plugin is offered
everywhere and compared in a sweep; a broken plugin never takes down the API, the workers or the
other methods, each case says why, and nothing is lost; a run of a method no live worker has waits,
saying so, and no other worker takes it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.runs.models import MetricPoint

from ..support import WORKER_TEST_ENV, Process, free_port, settings_env, wait_for, wait_in_page
from ..support.plugins import EXAMPLE_PLUGIN, pip_install, python_path, write_package

# One distribution of misbehaving methods; each breaks at its 25th training step (digits: ~20 steps
# an epoch at the default batch), so the first epoch's points and checkpoint exist before it breaks.
BAD_METHODS = {
    "bad_plugins/__init__.py": """\
        from training.plugins import MethodDescription

        def _method(name, cls):
            return MethodDescription(name=name, title=name, description="misbehaves on purpose",
                                     implementation=f"bad_plugins.method:{cls}", fusions=("add", "concat"))

        raises_mid_epoch = _method("raises_mid_epoch", "RaisesMidEpoch")
        nan_loss = _method("nan_loss", "NanLoss")
        wrong_shape = _method("wrong_shape", "WrongShape")
        """,
    "bad_plugins/method.py": """\
        import torch.nn.functional as F

        from training.likelihood import log_posterior, pair_scores
        from training.methods import Method

        class Counting(Method):
            calls = 0

            def per_sample(self, model, batch, log_prior):
                self.calls += 1
                f = model.f(batch.x) * batch.has_x.unsqueeze(1)
                g = model.g(batch.y) * batch.has_y.unsqueeze(1)
                log_q = log_posterior(pair_scores(f, g, model.label_embeddings(), model.fusion), log_prior)
                return F.nll_loss(log_q, batch.z, reduction="none")

        class RaisesMidEpoch(Counting):
            def loss(self, model, batch, log_prior, references):
                losses = self.per_sample(model, batch, log_prior)
                if self.calls == 25:
                    raise RuntimeError("the plugin's own bug")
                return losses.mean()

        class NanLoss(Counting):
            def loss(self, model, batch, log_prior, references):
                losses = self.per_sample(model, batch, log_prior)
                return losses.mean() * float("nan") if self.calls == 25 else losses.mean()

        class WrongShape(Counting):
            def loss(self, model, batch, log_prior, references):
                losses = self.per_sample(model, batch, log_prior)
                return losses if self.calls == 25 else losses.mean()  # per sample, not the batch's mean
        """,
    "broken_import/__init__.py": "import a_package_nobody_installed\n",
    "bad_options/__init__.py": """\
        from pydantic import BaseModel
        from training.plugins import MethodDescription

        class Options(BaseModel):
            table: dict = {}  # no form field, sweep value or key=value can hold it

        description = MethodDescription(name="bad_options", title="t", description="d",
                                        implementation="bad_options:X", options=Options)
        """,
}
BAD_ENTRY_POINTS = {"raises_mid_epoch": "bad_plugins:raises_mid_epoch", "nan_loss": "bad_plugins:nan_loss",
                    "wrong_shape": "bad_plugins:wrong_shape", "broken_import": "broken_import:description",
                    "bad_options": "bad_options:description"}


def zero_padding_like(package: str, name: str) -> dict[str, str]:
    return {f"{package}/__init__.py": f"""\
        from training.plugins import MethodDescription

        description = MethodDescription(name="{name}", title="{name}", description="zero padding, packaged apart",
                                        implementation="training.methods:ZeroPadding", fusions=("add",))
        """}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    """Where each process finds its plugins: the API's, and the first worker's (which lacks
    `api_only` and has `worker_only`)."""
    root = tmp_path_factory.mktemp("plugins")
    bad = write_package(root, "bad-plugins", BAD_METHODS, BAD_ENTRY_POINTS)
    api_only = write_package(root, "api-only-plugin", zero_padding_like("api_only", "api_only"),
                             {"api_only": "api_only:description"})
    worker_only = write_package(root, "worker-only-plugin", zero_padding_like("worker_only", "worker_only"),
                                {"worker_only": "worker_only:description"})
    return {"api": pip_install(root / "api", EXAMPLE_PLUGIN, bad, api_only),
            "worker": pip_install(root / "worker", EXAMPLE_PLUGIN, bad, worker_only)}


class Stack:
    """The API and workers of one test, each started with its own plugins folder."""

    def __init__(self, settings, tmp_path: Path):
        self.settings, self.tmp_path, self.processes = settings, tmp_path, []

    def env(self, site: Path) -> dict[str, str]:
        return {**settings_env(self.settings), **WORKER_TEST_ENV, "PYTHONPATH": python_path(site)}

    def api(self, site: Path) -> httpx.Client:
        port = free_port()
        process = Process([sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app", "--host",
                           "127.0.0.1", "--port", str(port)], self.env(site), self.tmp_path / "api.log")
        self.processes.append(process)
        process.wait_for_log("Uvicorn running on", timeout=180)
        self.url = f"http://127.0.0.1:{port}"
        return httpx.Client(base_url=self.url, timeout=60)

    def worker(self, site: Path) -> str:
        name = f"plugins-{uuid.uuid4().hex[:6]}@test"
        process = Process([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
                           "--hostname", name, "--without-gossip", "--without-mingle"], self.env(site),
                          self.tmp_path / f"{name}.log")
        self.processes.append(process)
        process.wait_for_log(" ready.", timeout=300)
        return name

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def stack(embedded_settings, tmp_path):
    stack = Stack(embedded_settings.model_copy(update={"reconcile_interval": 1.0}), tmp_path)
    yield stack
    stack.stop()


def run_body(method: str, **extra) -> dict:
    return {"dataset": "digits", "method": method, "missing_modality": "bottom", "missing_rate": 0.8,
            "epochs": 2, **extra}


def wait_run(api: httpx.Client, run_id: int, states: tuple[str, ...], timeout: float = 400) -> dict:
    return wait_for(lambda: (run := api.get(f"/api/runs/{run_id}").json())["state"] in states and run, timeout,
                    interval=0.5, what=f"run {run_id} in {states}")


@pytest.mark.faults
@pytest.mark.timeout(1200)  # two workers started, six runs; on a loaded machine a worker takes minutes to start
def test_bad_plugins_are_contained_each_says_why_and_nothing_is_lost(sites, stack):
    api = stack.api(sites["api"])
    worker = stack.worker(sites["worker"])

    # What the worker can train, and what it cannot (said on the workers API).
    workers = wait_for(lambda: api.get("/api/workers").json(), 60, what="the worker registered")
    assert workers[0]["name"] == worker
    assert {"mle", "moddrop", "worker_only", "raises_mid_epoch"} <= set(workers[0]["methods"])
    assert "api_only" not in workers[0]["methods"]
    assert "No module named 'a_package_nobody_installed'" in workers[0]["method_errors"]["broken_import"]

    # GET /api/choices: the broken ones with their reason; the worker's own, missing here.
    choices = api.get("/api/choices").json()
    assert {"mle", "zero_padding", "moddrop", "api_only", "raises_mid_epoch"} <= set(choices["methods"])
    reasons = {u["name"]: u["reason"] for u in choices["unavailable_methods"]}
    assert "No module named 'a_package_nobody_installed'" in reasons["broken_import"]
    assert "option 'table' has type object" in reasons["bad_options"]
    assert f"live worker {worker} can train it, but it is not installed beside this API" in reasons["worker_only"]

    # Refused at the edge, naming why; nothing written.
    refused = api.post("/api/runs", json=run_body("broken_import"))
    assert refused.status_code == 422 and "is installed but cannot be used" in refused.text
    assert api.post("/api/runs", json=run_body("worker_only")).status_code == 422
    assert api.get("/api/runs").json()["total"] == 0

    ids = {m: api.post("/api/runs", json=run_body(m)).json()["id"]
           for m in ("api_only", "raises_mid_epoch", "nan_loss", "wrong_shape", "moddrop", "mle")}
    waiting = wait_for(lambda: api.get(f"/api/runs/{ids['api_only']}").json()["waiting_for_worker"], 30,
                       what="the api_only run says it waits")
    assert waiting.startswith("no worker can train `api_only`")

    ended = {m: wait_run(api, ids[m], ("succeeded", "failed", "cancelled"))
             for m in ("raises_mid_epoch", "nan_loss", "wrong_shape", "moddrop", "mle")}
    assert ended["mle"]["state"] == ended["moddrop"]["state"] == "succeeded"
    assert ended["moddrop"]["info"]["method_package"] == {"name": "moddrop", "distribution": "missmod-moddrop",
                                                          "version": "0.1.0"}
    assert ended["moddrop"]["spec"]["method_options"] == {"drop_rate": 0.5, "rescale": False}
    errors = {m: ended[m]["error"] for m in ("raises_mid_epoch", "nan_loss", "wrong_shape")}
    assert all(ended[m]["state"] == "failed" for m in errors), errors
    assert ("method 'raises_mid_epoch' (bad-plugins 0.1.0): loss() at training step 25 raised RuntimeError: "
            "the plugin's own bug") in errors["raises_mid_epoch"]
    assert "method 'nan_loss' (bad-plugins 0.1.0): loss() at training step 25 returned nan" in errors["nan_loss"]
    assert "method 'wrong_shape' (bad-plugins 0.1.0): loss() at training step 25 returned (" in errors["wrong_shape"]
    assert "the protocol expects a scalar tensor" in errors["wrong_shape"]
    # Nothing lost: each failed run keeps its first epoch's points.
    with session_factory(stack.settings.database_url)() as session:
        for m in errors:
            kept = session.scalar(select(func.count()).where(MetricPoint.run_id == ids[m], MetricPoint.epoch == 1,
                                                             MetricPoint.name == "val_accuracy"))
            assert kept == 1, m

    # The run of a method this worker lacks was never taken; a worker that has it trains it.
    waiting_run = api.get(f"/api/runs/{ids['api_only']}").json()
    assert waiting_run["state"] == "queued" and waiting_run["attempts"] == 0 and waiting_run["worker"] is None
    assert api.get("/api/health").status_code == 200
    second = stack.worker(sites["api"])
    trained = wait_run(api, ids["api_only"], ("succeeded", "failed"))
    assert trained["state"] == "succeeded" and trained["worker"].startswith(second)
    assert trained["waiting_for_worker"] is None


@pytest.mark.browser
@pytest.mark.timeout(1500)  # nine runs and a CLI run trained by one worker, on a loaded machine too
def test_the_example_plugin_in_the_form_the_cli_and_a_sweep_beside_mle_and_zero_padding(sites, stack, page):
    api = stack.api(sites["api"])
    stack.worker(sites["api"])

    # The new-run form: the method, and its options as fields holding their defaults.
    page.goto(f"{stack.url}/runs/new")
    page.wait_for_selector("#new-run[data-ready=true]")
    assert page.locator("#f-method option[value=moddrop]").count() == 1
    page.select_option("#f-method", "moddrop")
    assert page.is_visible("#method-options")
    assert page.input_value("#method-options [name='option.drop_rate']") == "0.5"
    assert page.input_value("#method-options [name='option.rescale']") == "false"
    assert page.locator("#f-fusion option").all_inner_texts() == ["add", "concat"]

    # The CLI lists it with its options, and submits a run with one.
    cli_env = {**os.environ, "MISSMOD_URL": stack.url, "PYTHONPATH": python_path(sites["api"]), "COLUMNS": "250"}
    listed = subprocess.run([sys.executable, "-m", "missmod.cli", "methods", "list"], env=cli_env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "moddrop" in listed.stdout and "drop_rate=0.5" in listed.stdout
    submitted = subprocess.run([sys.executable, "-m", "missmod.cli", "runs", "submit", "dataset=digits",
                                "method=moddrop", "missing_modality=bottom", "missing_rate=0.8", "epochs=1",
                                "options.drop_rate=0.25", "--json"], env=cli_env, capture_output=True, text=True,
                               timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    cli_run = max(api.get("/api/runs").json()["items"], key=lambda r: r["id"])
    assert cli_run["spec"]["method_options"] == {"drop_rate": 0.25, "rescale": False}

    # A sweep from the form: moddrop (its option in the grid) beside mle and zero_padding, 3 seeds.
    page.goto(f"{stack.url}/sweeps/new")
    page.wait_for_selector("#new-sweep[data-ready=true]")
    page.check("#s-methods input[value=zero_padding]")
    page.check("#s-methods input[value=moddrop]")
    page.fill("#s-method-options [name='option.moddrop.drop_rate']", "0.3")
    page.fill("#s-missing-rates", "0.8")
    page.fill("#s-seeds", "0-2")
    page.fill("#s-epochs", "2")
    wait_in_page(page, "document.getElementById('sweep-count').dataset.count === '9'", timeout=60)
    with page.expect_navigation():
        page.click("#submit-sweep")
    sweep_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    sweep = api.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["grid"]["method_options.moddrop.drop_rate"] == [0.3]
    wait_for(lambda: api.get(f"/api/sweeps/{sweep_id}").json()["progress"]["done"], 900, interval=1,
             what="the sweep finished")
    progress = api.get(f"/api/sweeps/{sweep_id}").json()["progress"]
    assert progress["succeeded"] == 9, progress

    # Its table pairs moddrop's cell with the reference, seed by seed and sample by sample.
    table = api.get(f"/api/sweeps/{sweep_id}/table", params={"test": "samples", "reference": "mle (add)"}).json()
    rows = {row["label"]: row for row in table["rows"]}
    assert set(rows) == {"mle (add)", "zero_padding (add)", "moddrop (add)"}
    moddrop = rows["moddrop (add)"]["cells"][0]
    assert moddrop["n"] == 3 and moddrop["paired"] is not None
    assert moddrop["paired"]["p_value"] is not None and moddrop["paired"]["wins"] + moddrop["paired"]["ties"] + \
        moddrop["paired"]["losses"] == 3
    page.goto(f"{stack.url}/sweeps/{sweep_id}")
    page.wait_for_selector("#sweep-page[data-drawn=true]")
    page.select_option("#paired-reference", "mle (add)")
    wait_in_page(page, "[...document.querySelectorAll('#sweep-table tbody th')].some(th => "
                       "th.textContent.startsWith('moddrop (add)'))")
    # The table first drawn pairs with the page's default reference; wait for the one against mle.
    wait_in_page(page, "[...document.querySelectorAll('#sweep-table tbody tr')].some(tr => "
                       "tr.querySelector('th').textContent.startsWith('moddrop') && tr.querySelector('td .paired') "
                       f"&& tr.querySelector('td').dataset.wins === '{moddrop['paired']['wins']}')")
    shown = page.evaluate("""() => [...document.querySelectorAll('#sweep-table tbody tr')]
        .filter(tr => tr.querySelector('th').textContent.startsWith('moddrop'))
        .map(tr => ({n: tr.querySelector('td').dataset.n, wins: tr.querySelector('td').dataset.wins,
                     paired: tr.querySelector('td .paired').textContent}))[0]""")
    assert shown["n"] == "3" and shown["wins"] == str(moddrop["paired"]["wins"])
    assert shown["paired"].startswith("Δ")
    assert not page.js_errors


def test_a_methods_options_multiply_only_its_own_runs_in_a_grid():
    from backend.sweeps.grid import expand_grid, grid_size

    grid = {"method": ["mle", "zero_padding"], "seed": [0, 1], "method_options.zero_padding.x": [1, 2, 3]}
    combinations = expand_grid(grid)
    assert len(combinations) == grid_size(grid) == 2 * (1 + 3)
    assert [c for c in combinations if c["method"] == "mle"] == [{"seed": 0, "method": "mle"},
                                                                  {"seed": 1, "method": "mle"}]
    assert [c["method_options"] for c in combinations if c["method"] == "zero_padding" and c["seed"] == 0] == \
        [{"x": 1}, {"x": 2}, {"x": 3}]


@pytest.mark.services
def test_on_redis_a_plugins_run_goes_to_its_methods_queue_and_a_builtin_one_to_the_default(service_settings):
    """What a worker without the plugin consumes (the default queue) never holds a run of it."""
    import json

    import redis

    from backend.queue import WorkQueue

    queue = WorkQueue(service_settings)
    try:
        queue.send_run(101, "moddrop")
        queue.send_run(102, "mle")
    finally:
        queue.close()
    client = redis.Redis.from_url(service_settings.broker_url)
    try:
        ids = {name: [json.loads(m)["headers"]["id"] for m in client.lrange(name, 0, -1)]
               for name in (service_settings.task_queue, f"{service_settings.task_queue}.method.moddrop")}
        assert ids == {service_settings.task_queue: ["102"], f"{service_settings.task_queue}.method.moddrop": ["101"]}
    finally:
        client.delete(*ids)
        client.close()
