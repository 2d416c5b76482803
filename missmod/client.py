"""The Python client of the missmod API.

    from missmod.client import Client

    client = Client("http://127.0.0.1:8000", token=None)   # or MISSMOD_URL / MISSMOD_TOKEN
    run = client.submit(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9)
    run = client.wait(run)                                  # live progress bar; returns the finished run
    df = client.runs(method="mle", where=["accuracy>0.8"]).to_pandas()

Every list is read to its end, page by page (cursor pagination); waiting follows the server's
live stream (Server-Sent Events). An error answer raises ApiError (or a subclass by status)
carrying the server's message and, for invalid input, the field at fault.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from httpx_sse import connect_sse

from .live import LiveRun, Protocol, environment as live_environment
from .models import Metrics, Point, Predictions, Run, RunList, Study, Sweep, Table

DEFAULT_URL = "http://127.0.0.1:8000"
PAGE_SIZE = 200
# The server pings a live stream every 15 s: a read waits somewhat longer before reconnecting.
STREAM_READ_TIMEOUT = 30.0


class MissmodError(Exception):
    """Anything the client raises on purpose."""


class ApiError(MissmodError):
    """The API answered with an error (RFC 9457 problem details)."""

    def __init__(self, status: int, title: str, detail: Any, body: Any = None):
        self.status, self.title, self.detail, self.body = status, title, detail, body
        # A 422 lists the invalid inputs: {"loc": ["body", "missing_rate"], "msg": ...}.
        self.errors: list[dict[str, Any]] = detail if isinstance(detail, list) else []
        super().__init__(self._message())

    @property
    def fields(self) -> list[str]:
        """The names of the inputs at fault, e.g. ["missing_rate"] or ["where.0"]."""
        names = []
        for error in self.errors:
            loc = [str(part) for part in error.get("loc", []) if part not in ("body", "query", "path")]
            if loc:
                names.append(".".join(loc))
        return names

    @property
    def field(self) -> str | None:
        """The first input at fault, if the error is about an input."""
        return self.fields[0] if self.fields else None

    def _message(self) -> str:
        if self.errors:
            parts = []
            for error in self.errors:
                loc = ".".join(str(p) for p in error.get("loc", []) if p not in ("body", "query", "path"))
                parts.append(f"{loc}: {error.get('msg')}" if loc else str(error.get("msg")))
            return f"{self.status} {self.title}: " + "; ".join(parts)
        return f"{self.status} {self.title}: {self.detail}"


class Unauthorized(ApiError):
    """401: the server has an API_TOKEN; pass token= (or set MISSMOD_TOKEN)."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: the action does not apply in the current state (e.g. retrying a run that succeeded)."""


class InvalidInput(ApiError):
    """422: an input is invalid; `field` names it."""


class Unavailable(ApiError):
    """503: the database or the broker is unreachable; try again shortly."""


ERRORS_BY_STATUS = {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidInput, 503: Unavailable}


class WaitTimeout(MissmodError):
    """wait() ran out of time before the run or sweep finished."""


def _id_of(thing: Any, kind: type) -> int:
    if isinstance(thing, kind) or isinstance(getattr(thing, "id", None), int):  # a Run, a LiveRun
        return thing.id
    if isinstance(thing, Mapping):
        return int(thing["id"])
    return int(thing)


def _progress_bar(progress: bool, total: int | None, description: str):
    if not progress:
        return None
    from tqdm.auto import tqdm  # a notebook widget in Jupyter, a text bar in a terminal

    return tqdm(total=total, desc=description, unit="", leave=True)


class Client:
    """A session with one missmod server. `url` and `token` default to the environment
    variables MISSMOD_URL (else http://127.0.0.1:8000) and MISSMOD_TOKEN."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("MISSMOD_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("MISSMOD_TOKEN") or None
        headers = {"Accept": "application/json", "User-Agent": "missmod-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- HTTP --------------------------------------------------------------------------

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            title = body.get("title") or response.reason_phrase
            detail = body.get("detail", body)
        else:
            title, detail = response.reason_phrase, response.text[:500]
        raise ERRORS_BY_STATUS.get(response.status_code, ApiError)(response.status_code, title, detail, body)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Any API call; raises ApiError on an error answer."""
        response = self._http.request(method, path, **kwargs)
        self._raise_for(response)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def health(self) -> dict[str, Any]:
        response = self._http.get("/api/health")
        return response.json()

    # --- runs --------------------------------------------------------------------------

    def submit(self, **spec: Any) -> Run:
        """Create a run: any field of a run spec (dataset, method, missing_modality, missing_rate,
        fusion, epochs, seed, lr, encoder, …, name)."""
        return Run(**self._json("POST", "/api/runs", json=spec))

    def run(self, run: Any) -> Run:
        return Run(**self._json("GET", f"/api/runs/{_id_of(run, Run)}"))

    def iter_runs(self, *, where: str | Sequence[str] | None = None, sort: str = "-id", page_size: int = PAGE_SIZE,
                  **filters: Any) -> Iterator[Run]:
        """Every run matching the filters, page after page. Filters: state (one or a list),
        dataset, method, fusion, missing_modality, missing_rate, sweep, tag, q (name contains),
        external; `where`: conditions on any spec field or final metric, e.g.
        ["accuracy>0.8", "encoder=resnet50", "metrics.val_loss<0.5"]."""
        params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        if isinstance(params.get("sweep"), Sweep):
            params["sweep"] = params["sweep"].id
        if "external" in params:
            params["external"] = "true" if params["external"] else "false"
        if where:
            params["where"] = [where] if isinstance(where, str) else list(where)
        params.update(sort=sort, limit=page_size)
        cursor = None
        while True:
            page = self._json("GET", "/api/runs", params={**params, **({"cursor": cursor} if cursor else {})})
            for item in page["items"]:
                yield Run(**item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def runs(self, *, limit: int | None = None, **query: Any) -> RunList:
        """The runs matching the filters (see iter_runs), all of them or the first `limit`;
        `.to_pandas()` gives a DataFrame."""
        found = RunList()
        for run in self.iter_runs(**query):
            if limit is not None and len(found) >= limit:
                break
            found.append(run)
        return found

    def metrics(self, run: Any) -> Metrics:
        """Every metric point of the run (`.to_pandas()`: one row per epoch)."""
        run_id = _id_of(run, Run)
        points, after = Metrics(), 0
        while True:
            page = self._json("GET", f"/api/runs/{run_id}/metrics", params={"after": after, "limit": 10_000})
            points.extend(Point(**p) for p in page["points"])
            if page.get("next_cursor") is None:
                return points
            after = page["next_cursor"]

    def confusion(self, run: Any) -> dict[str, Any]:
        """{"epoch", "classes", "counts" (rows: true class), "counted"}."""
        return self._json("GET", f"/api/runs/{_id_of(run, Run)}/confusion")

    def predictions(self, run: Any) -> Predictions:
        """The run's stored test predictions (`.to_pandas()`: one row per test sample), to check a
        sample-level comparison yourself: `a.discordant(b)` gives McNemar's counts. NotFound when
        the run kept none."""
        return Predictions(**self._json("GET", f"/api/runs/{_id_of(run, Run)}/predictions"))

    def predict(self, run: Any, x: Any = None, y: Any = None, *, rows_per_request: int | None = None,
                **modalities: Any):
        """Class probabilities of samples from the run's model at its selected epoch: a DataFrame
        with one row per sample, `predicted` (the class name), `predicted_index` and one column
        `p_<class>` per class; `.attrs` says the epoch, the method, what was given and the rule.
        x and y: arrays (n, …) as in the dataset, or one sample; give x, y or both (y alone where
        the method supports it), or pass them by the modalities' names (`top=…`). Many rows go in
        several requests (at most `rows_per_request` each; by default what fits the server's
        usual limits)."""
        import numpy as np

        run_id = _id_of(run, Run)
        arrays = {name: np.asarray(values) for name, values in {"x": x, "y": y, **modalities}.items()
                  if values is not None}
        if not arrays:
            raise ValueError("give x, y, or both")
        single = {name: values.ndim == 1 for name, values in arrays.items()}  # one vector sample
        arrays = {name: values[None] if single[name] else values for name, values in arrays.items()}
        n = max(len(values) for values in arrays.values())
        row_bytes = sum(4 * int(np.prod(values.shape[1:])) for values in arrays.values())
        size = rows_per_request or max(1, min(PREDICT_ROWS, PREDICT_BYTES // max(row_bytes, 1)))
        answers = []
        for start in range(0, n, size):
            answers.append(self._json("POST", f"/api/runs/{run_id}/predict",
                                      content=_npz({k: v[start : start + size] for k, v in arrays.items()}),
                                      headers={"Content-Type": "application/x-npz"}))
        return _prediction_frame(answers)

    def download_model(self, run: Any, path: str | os.PathLike | None = None) -> str:
        """Save the run's model bundle (`training.bundle.load_model` predicts with it offline) to
        `path` (default `run-<id>-model.zip`); returns the path."""
        run_id = _id_of(run, Run)
        target = os.fspath(path) if path is not None else f"run-{run_id}-model.zip"
        with self._http.stream("GET", f"/api/runs/{run_id}/model") as response:
            if not response.is_success:
                response.read()
                self._raise_for(response)
            partial = f"{target}.part"
            with open(partial, "wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        os.replace(partial, target)
        return target

    def cancel(self, run: Any) -> Run:
        return Run(**self._json("POST", f"/api/runs/{_id_of(run, Run)}/cancel"))

    def retry(self, run: Any) -> Run:
        return Run(**self._json("POST", f"/api/runs/{_id_of(run, Run)}/retry"))

    def delete(self, run: Any) -> None:
        self.request("DELETE", f"/api/runs/{_id_of(run, Run)}")

    def _bulk(self, action: str, runs: Iterable[Any]) -> dict[str, Any]:
        return self._json("POST", f"/api/runs/bulk-{action}", json={"ids": [_id_of(r, Run) for r in runs]})

    def cancel_many(self, runs: Iterable[Any]) -> dict[str, Any]:
        """One request; {"done": [...], "not_found": [...], "refused": [{"id", "reason"}]}."""
        return self._bulk("cancel", runs)

    def retry_many(self, runs: Iterable[Any]) -> dict[str, Any]:
        return self._bulk("retry", runs)

    def delete_many(self, runs: Iterable[Any]) -> dict[str, Any]:
        return self._bulk("delete", runs)

    def log_run(self, spec_like: Mapping[str, Any], metrics: Any = (), confusion: Any = None, *,
                test_accuracy: float | None = None, val_accuracy: float | None = None,
                best_epoch: int | None = None, sweep: Any = None, source: str | None = None,
                name: str | None = None, test_predictions: Sequence[int] | None = None,
                protocol_digest: str | None = None) -> Run:
        """Record a run trained elsewhere, marked external. `spec_like`: its setting as a run
        spec names it (dataset, method, fusion, missing_modality, missing_rate, seed; any other
        key is kept as a setting). `metrics`: points [{"epoch", "name", "value"}], or
        {name: [value per epoch, from 1]}, or {name: {epoch: value}}, or a DataFrame with an
        `epoch` column and a column per metric. `confusion`: {"classes", "counts"} or a K × K
        list. test_accuracy defaults to the last `test_accuracy` point. `sweep`: show it in that
        sweep's table and trend. `test_predictions`: the predicted class of each test sample of
        missmod's split for the setting (client.protocol(...), in its `test_groups` order): the run
        is then paired with missmod's runs (McNemar); `protocol_digest`: that protocol's digest."""
        named = ("dataset", "method", "fusion", "missing_modality", "missing_rate", "seed")
        body: dict[str, Any] = {k: spec_like[k] for k in named if k in spec_like}
        body["spec"] = {k: v for k, v in spec_like.items() if k not in named and k != "name"}
        points = _points(metrics)
        body["metrics"] = points
        if test_accuracy is None:
            finals = [p for p in points if p["name"] == "test_accuracy" and p["value"] is not None]
            test_accuracy = max(finals, key=lambda p: p["epoch"])["value"] if finals else None
        if confusion is not None and not isinstance(confusion, Mapping):
            counts = [[int(c) for c in row] for row in confusion]
            confusion = {"classes": [str(i) for i in range(len(counts))], "counts": counts}
        optional = {"test_accuracy": test_accuracy, "val_accuracy": val_accuracy, "best_epoch": best_epoch,
                    "confusion": dict(confusion) if confusion is not None else None,
                    "sweep_id": _id_of(sweep, Sweep) if sweep is not None else None, "source": source,
                    "name": name or spec_like.get("name"), "protocol_digest": protocol_digest,
                    "test_predictions": [int(p) for p in test_predictions] if test_predictions is not None else None}
        body.update({k: v for k, v in optional.items() if v is not None})
        return Run(**self._json("POST", "/api/runs/external", json=body))

    # --- live runs: logged from the script's own loop (missmod/live.py) -------------------

    def start_run(self, *, dataset: str, method_label: str | None = None, missing_modality: str,
                  missing_rate: float, seed: int = 0, fusion: str = "add", method: str | None = None,
                  name: str | None = None, source: str | None = None, sweep: Any = None,
                  epochs: int | None = None, steps_per_epoch: int | None = None,
                  interval: float = 0.2, batch_size: int = 10_000, **settings: Any) -> LiveRun:
        """Start a run this script trains in its own loop and logs live (docs/live-runs.md):
        `with client.start_run(dataset=..., method_label=..., missing_modality=..., missing_rate=...,
        seed=...) as run: run.log(step=..., epoch=..., train_loss=...)`. `method_label` names your
        method (free text); other keyword arguments are kept as the run's settings (`split_by`,
        `other_missing_rate` choose missmod's split, as for a run). Points are sent in batches
        every `interval` seconds from a background thread, with heartbeats."""
        label = method_label or method
        if not label:
            raise TypeError("start_run needs method_label= (the name of your method)")
        body: dict[str, Any] = {"dataset": dataset, "method": label, "fusion": fusion,
                                "missing_modality": missing_modality, "missing_rate": missing_rate, "seed": seed,
                                "spec": settings, "environment": live_environment()}
        optional = {"name": name, "source": source, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                    "sweep_id": _id_of(sweep, Sweep) if sweep is not None else None}
        body.update({k: v for k, v in optional.items() if v is not None})
        return LiveRun(self, self._json("POST", "/api/runs/live", json=body), interval=interval,
                       batch_size=batch_size)

    def protocol(self, dataset: str, seed: int = 0, missing_rate: float = 0.0, other_missing_rate: float = 0.0,
                 split_by: str = "group") -> Protocol:
        """The samples missmod's workers use for this setting: train/val/test rows of the dataset,
        the missing mask over the training rows, and the order of the test predictions to upload."""
        found = self._json("GET", "/api/protocol", params={
            "dataset": dataset, "seed": seed, "missing_rate": missing_rate,
            "other_missing_rate": other_missing_rate, "split_by": split_by})
        return Protocol(**{name: found[name] for name in Protocol.__dataclass_fields__})

    # --- sweeps ------------------------------------------------------------------------

    def sweep(self, grid: Mapping[str, Any] | None = None, *, preset: str | None = None, **fields: Any) -> Sweep:
        """A grid sweep — any run field may be a list: sweep({"dataset": "digits", "method":
        ["mle", "zero_padding"], "missing_rate": [0.8, 0.9], "seed": [0, 1, 2]}) — or a paper
        preset: sweep(preset="table1", dataset="digits", seeds=3, epochs=20)."""
        body = {**(grid or {}), **fields}
        if preset is not None:
            return Sweep(**self._json("POST", f"/api/presets/{preset}/sweeps", json=body))
        return Sweep(**self._json("POST", "/api/sweeps", json=body))

    def get_sweep(self, sweep: Any, *, include_external: bool = False) -> Sweep:
        """The sweep and its progress; runs trained elsewhere count in it only with include_external."""
        return Sweep(**self._json("GET", f"/api/sweeps/{_id_of(sweep, Sweep)}",
                                  params=_external_param(include_external)))

    def sweeps(self, page_size: int = PAGE_SIZE, *, include_external: bool = False) -> list[Sweep]:
        found, cursor = [], None
        while True:
            params = {"limit": page_size, **({"cursor": cursor} if cursor else {}), **_external_param(include_external)}
            page = self._json("GET", "/api/sweeps", params=params)
            found += [Sweep(**item) for item in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def table(self, sweep: Any, *, reference: str | None = None, test: str = "seeds",
              include_external: bool = False) -> Table:
        """The comparison table (`.to_pandas()`, paired statistics included); rows of runs trained
        elsewhere have external=True. `reference`: the row label (e.g. "zero_padding (add)") or
        the method each cell is compared with (default: the best baseline of each column);
        `test`: "seeds" (exact sign-flip over seeds) or "samples" (McNemar over the stored test
        predictions); `include_external`: runs trained elsewhere join Holm's family of comparisons
        (where their pairing is verified). See docs/statistics.md."""
        return Table(self._json("GET", f"/api/sweeps/{_id_of(sweep, Sweep)}/table",
                                params=_comparison_params(reference, test, include_external)))

    def trend(self, sweep: Any, *, reference: str | None = None, test: str = "seeds",
              include_external: bool = False) -> dict[str, Any]:
        """Accuracy against missing rate, each point compared as in table()."""
        return self._json("GET", f"/api/sweeps/{_id_of(sweep, Sweep)}/trend",
                          params=_comparison_params(reference, test, include_external))

    def retry_sweep(self, sweep: Any) -> list[int]:
        return self._json("POST", f"/api/sweeps/{_id_of(sweep, Sweep)}/retry")["run_ids"]

    def delete_sweep(self, sweep: Any, keep_runs: bool = False) -> None:
        self.request("DELETE", f"/api/sweeps/{_id_of(sweep, Sweep)}",
                     params={"keep_runs": "true" if keep_runs else "false"})

    def selection_rules(self, sweep_or_study: Any) -> dict[str, Any]:
        """The comparison table under every selection rule, from the epochs the runs recorded (no
        retraining), with the columns whose ranking changes (docs/studies.md)."""
        if isinstance(sweep_or_study, Study):
            return self._json("GET", f"/api/studies/{sweep_or_study.id}/selection-rules")
        return self._json("GET", f"/api/sweeps/{_id_of(sweep_or_study, Sweep)}/selection-rules")

    # --- studies -----------------------------------------------------------------------

    def study(self, body: Mapping[str, Any] | None = None, *, preset: str | None = None, **fields: Any) -> Study:
        """A hyperparameter study (docs/studies.md): study(dataset="digits", missing_modality="bottom",
        missing_rate=0.9, methods=["mle", "zero_padding"], trials=20, spec={"epochs": 50},
        pruner={"name": "median"}) — or a tuned preset: study(preset="mle_vs_zero_padding_tuned",
        dataset="digits", epochs=50, trials=20)."""
        payload = {**(body or {}), **fields}
        if preset is not None:
            return Study(**self._json("POST", f"/api/studies/presets/{preset}", json=payload))
        return Study(**self._json("POST", "/api/studies", json=payload))

    def get_study(self, study: Any) -> Study:
        return Study(**self._json("GET", f"/api/studies/{_id_of(study, Study)}"))

    def studies(self, page_size: int = PAGE_SIZE) -> list[Study]:
        found, cursor = [], None
        while True:
            params = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._json("GET", "/api/studies", params=params)
            found += [Study(**item) for item in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def trials(self, study: Any, arm: int | None = None) -> list[dict[str, Any]]:
        """The trials (validation figures; test accuracy hidden until the study is finished)."""
        params = {} if arm is None else {"arm": arm}
        return self._json("GET", f"/api/studies/{_id_of(study, Study)}/trials", params=params)

    def study_table(self, study: Any) -> Table:
        """The final runs' table with the hyperparameters chosen for each cell (`.to_pandas()`)."""
        return Table(self._json("GET", f"/api/studies/{_id_of(study, Study)}/table"))

    def cancel_study(self, study: Any) -> Study:
        return Study(**self._json("POST", f"/api/studies/{_id_of(study, Study)}/cancel"))

    def delete_study(self, study: Any) -> None:
        self.request("DELETE", f"/api/studies/{_id_of(study, Study)}")

    # --- catalogue and dataset jobs ----------------------------------------------------

    def presets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/presets")

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/datasets")

    def methods(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/methods")

    def preprocess(self, dataset: str) -> dict[str, Any]:
        return self._json("POST", f"/api/datasets/{dataset}/preprocess")

    def jobs(self, dataset: str | None = None) -> list[dict[str, Any]]:
        found, cursor = [], None
        while True:
            params = {"limit": PAGE_SIZE, **({"dataset": dataset} if dataset else {}),
                      **({"cursor": cursor} if cursor else {})}
            response = self.request("GET", "/api/jobs", params=params)
            found += response.json()
            cursor = response.headers.get("x-next-cursor")
            if not cursor:
                return found

    # --- waiting -----------------------------------------------------------------------

    def wait(self, run_or_sweep: Any, progress: bool = True, timeout: float | None = None) -> Run | Sweep | Study:
        """Follow a run (epochs) or a sweep (finished runs) live, or a study (its trials, then its
        final runs), until it finishes; returns it. Raises WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if isinstance(run_or_sweep, Sweep):
            return self._wait_sweep(run_or_sweep.id, progress, deadline)
        if isinstance(run_or_sweep, Study):
            return self._wait_study(run_or_sweep.id, progress, deadline)
        return self._wait_run(_id_of(run_or_sweep, Run), progress, deadline)

    def stream(self, path: str, deadline: float | None, last_event_id: str | None = None) -> Iterator[Any]:
        """The events of a live stream, reconnecting (from the last event id) when the
        connection drops; ends when the server closes it."""
        remaining = STREAM_READ_TIMEOUT if deadline is None else max(0.1, deadline - time.monotonic())
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=min(STREAM_READ_TIMEOUT, remaining))
        with connect_sse(self._http, "GET", path, headers=headers, timeout=timeout) as source:
            if not source.response.is_success:
                source.response.read()
                self._raise_for(source.response)
            yield from source.iter_sse()

    def _follow(self, path: str, deadline: float | None, on_event) -> None:
        """Call on_event(event) for every event until it returns True; reconnect as needed."""
        last_event_id = None
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{path}: still not finished")
            try:
                for event in self.stream(path, deadline, last_event_id):
                    if event.id:
                        last_event_id = event.id
                    if on_event(event):
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout(f"{path}: still not finished")
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(0.5)  # the server restarted, or a proxy cut an idle stream: reconnect
            if on_event(None):  # the stream ended without `end`: ask the server directly
                return

    def _wait_run(self, run_id: int, progress: bool, deadline: float | None) -> Run:
        run = self.run(run_id)
        bar = _progress_bar(progress and not run.finished, run.spec.get("epochs"), f"run {run_id}")
        state = {"run": run}

        def on_event(event) -> bool:
            if event is None:
                state["run"] = self.run(run_id)
            elif event.event == "run":
                state["run"] = Run(**json.loads(event.data))
            elif event.event == "gone":
                raise NotFound(404, "Not Found", f"run {run_id} was deleted while waiting")
            current = state["run"]
            if bar is not None:
                bar.n = current.epochs_completed
                bar.set_postfix_str(current.state, refresh=True)
            return current.finished or (event is not None and event.event == "end")

        try:
            if not run.finished:
                self._follow(f"/api/runs/{run_id}/stream", deadline, on_event)
        finally:
            if bar is not None:
                bar.close()
        return self.run(run_id)

    def _wait_sweep(self, sweep_id: int, progress: bool, deadline: float | None) -> Sweep:
        sweep = self.get_sweep(sweep_id)
        bar = _progress_bar(progress and not sweep.finished, sweep.progress.get("total"), f"sweep {sweep_id}")

        def on_event(event) -> bool:
            if event is None:
                counts = self.get_sweep(sweep_id).progress
            elif event.event in ("progress", "end"):
                counts = json.loads(event.data)
            elif event.event == "gone":
                raise NotFound(404, "Not Found", f"sweep {sweep_id} was deleted while waiting")
            else:
                return False
            if bar is not None:
                bar.total = counts.get("total")
                bar.n = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
                bar.set_postfix_str(f"{counts.get('failed', 0)} failed", refresh=True)
            return bool(counts.get("done"))

        try:
            if not sweep.finished:
                self._follow(f"/api/sweeps/{sweep_id}/stream", deadline, on_event)
        finally:
            if bar is not None:
                bar.close()
        return self.get_sweep(sweep_id)

    # A study has no live stream of its own: its state is read every STUDY_POLL seconds.
    STUDY_POLL = 1.0

    def _wait_study(self, study_id: int, progress: bool, deadline: float | None) -> Study:
        study = self.get_study(study_id)
        bar = _progress_bar(progress and not study.finished, study.trials.get("budget"), f"study {study_id}")
        try:
            while not study.finished:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"study {study_id}: still {study.state}")
                time.sleep(self.STUDY_POLL)
                study = self.get_study(study_id)
                if bar is not None:
                    counts = study.trials
                    bar.n = counts.get("total", 0) - counts.get("running", 0)
                    bar.set_postfix_str(f"{study.state}, {counts.get('pruned', 0)} pruned, "
                                        f"{counts.get('failed', 0)} failed", refresh=True)
        finally:
            if bar is not None:
                bar.close()
        return study


# Rows and bytes (as float32) per prediction request: below the server's defaults (PREDICT_MAX_ROWS
# 10,000 and MAX_REQUEST_BYTES 1,000,000, with room for the .npz's headers).
PREDICT_ROWS = 10_000
PREDICT_BYTES = 900_000


def _npz(arrays: Mapping[str, Any]) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: the server names the row
        np.savez(buffer, **{name: np.asarray(values, dtype=np.float32) if np.asarray(values).dtype.kind in "iufb"
                            else np.asarray(values) for name, values in arrays.items()})
    return buffer.getvalue()


def _prediction_frame(answers: list[dict[str, Any]]):
    from .models import _pandas

    pandas = _pandas()
    first = answers[0]
    classes = first["classes"]
    probabilities = [row for answer in answers for row in answer["probabilities"]]
    frame = pandas.DataFrame(probabilities, columns=[f"p_{name}" for name in classes])
    frame.insert(0, "predicted_index", [i for answer in answers for i in answer["predicted"]])
    frame.insert(0, "predicted", [name for answer in answers for name in answer["predicted_class"]])
    frame.attrs.update({key: first[key] for key in ("run_id", "epoch", "method", "inputs", "rule", "classes")})
    return frame


def _external_param(include_external: bool) -> dict[str, str]:
    # Sent only when asked: the default is the server's, and an older server knows no such parameter.
    return {"include_external": "true"} if include_external else {}


def _comparison_params(reference: str | None, test: str, include_external: bool) -> dict[str, str]:
    return {**({"reference": reference} if reference is not None else {}), "test": test,
            **_external_param(include_external)}


def _points(metrics: Any) -> list[dict[str, Any]]:
    """log_run's metrics, in any of the shapes it takes, as API points."""
    if hasattr(metrics, "to_dict") and hasattr(metrics, "columns"):  # a pandas DataFrame
        records = metrics.to_dict("records")
        if "name" in metrics.columns and "value" in metrics.columns:
            return [{"epoch": int(r["epoch"]), "name": str(r["name"]), "value": _number(r["value"])} for r in records]
        return [{"epoch": int(r["epoch"]), "name": str(name), "value": _number(value)}
                for r in records for name, value in r.items() if name != "epoch"]
    if isinstance(metrics, Mapping):
        points = []
        for name, series in metrics.items():
            pairs = series.items() if isinstance(series, Mapping) else enumerate(series, start=1)
            points += [{"epoch": int(epoch), "name": str(name), "value": _number(value)} for epoch, value in pairs]
        return points
    return [{"epoch": int(p["epoch"]), "name": str(p["name"]), "value": _number(p["value"])} for p in metrics]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None
