"""A run logged live from a script's own training loop (docs/live-runs.md):

    with client.start_run(dataset="digits", method_label="my_method", missing_modality="bottom",
                          missing_rate=0.9, seed=0) as run:
        split = run.protocol()                    # missmod's train/val/test rows and missing mask
        for epoch in range(1, epochs + 1):
            for batch in ...:
                run.log(step=step, epoch=epoch, train_loss=loss)      # per-step: `step/train_loss`
            run.log(epoch=epoch, val_accuracy=acc)                      # per-epoch: `val_accuracy`
        run.finish(test_predictions=predicted)    # paired with missmod's runs (McNemar)

`log` only appends to a buffer (about a microsecond): a background thread sends the points in
batches (every `interval` seconds, or as soon as `batch_size` are waiting) through the same
ingestion as a worker's, and a heartbeat whenever it has had nothing to send for a while. A script
killed outright stops the heartbeats: the server marks its run lost (failed) after LIVE_RUN_TIMEOUT.
An exception inside the `with` ends the run failed with the error; leaving it normally finishes it.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .models import Run

if TYPE_CHECKING:
    from .client import Client

STEP_PREFIX = "step/"


def environment() -> dict[str, Any]:
    """The script's reproducibility record, with the keys of a worker's (training/reproducibility.py).
    torch is described only if the script has imported it: the client never imports it."""
    torch = sys.modules.get("torch")

    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    facts: dict[str, Any] = {
        "missmod_version": version("missmod"), "git_commit": None, "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None), "cuda": None, "cudnn": None, "device": None, "device_name": None,
        "torch_threads": None, "torch_interop_threads": None, "cpu_count": os.cpu_count(),
        "host": socket.gethostname(), "plugin": None, "plugin_version": None,
    }
    if torch is not None:
        try:
            facts["cuda"] = torch.version.cuda
            facts["torch_threads"] = torch.get_num_threads()
            facts["torch_interop_threads"] = torch.get_num_interop_threads()
            if torch.backends.cudnn.is_available():
                facts["cudnn"] = str(torch.backends.cudnn.version())
            if torch.cuda.is_available():
                facts["device"], facts["device_name"] = "cuda", torch.cuda.get_device_name(0)
            else:
                facts["device"] = "cpu"
        except Exception:  # a fact that cannot be read stays None
            pass
    return facts


class RunLost(RuntimeError):
    """The server no longer takes this run's points: it was marked lost (no heartbeat for
    LIVE_RUN_TIMEOUT), ended, or deleted."""


@dataclass(frozen=True)
class Protocol:
    """missmod's samples for the run's setting (GET /api/protocol): rows of the dataset for
    training, validation and test; `y_missing[i]` (`x_missing[i]`): training row `train[i]` lost
    y (x); test predictions are listed one per `test_groups` entry, whose true classes are
    `test_labels`."""

    train: list[int]
    val: list[int]
    test: list[int]
    y_missing: list[bool]
    x_missing: list[bool]
    test_groups: list[Any]
    test_labels: list[int]
    classes: list[str]
    digest: str


class _Columns:
    """Buffered points as the columns the API takes (names sent once per batch)."""

    def __init__(self):
        self.names: dict[str, int] = {}
        self.epoch: list[int] = []
        self.step: list[int] = []
        self.name: list[int] = []
        self.value: list[float | None] = []

    def __len__(self) -> int:
        return len(self.epoch)

    def split(self, count: int) -> "_Columns":
        """Take the first `count` points out (the names stay shared: unused ones cost nothing)."""
        first = _Columns()
        first.names = dict(self.names)
        for column in ("epoch", "step", "name", "value"):
            values = getattr(self, column)
            setattr(first, column, values[:count])
            del values[:count]
        return first

    def body(self) -> dict[str, Any]:
        return {"names": list(self.names), "epoch": self.epoch, "step": self.step, "name": self.name,
                "value": self.value}


class LiveRun:
    """A run this script trains and logs while it trains (Client.start_run). Thread-safe: `log`
    may be called from any thread."""

    def __init__(self, client: "Client", started: dict[str, Any], *, interval: float = 0.2,
                 batch_size: int = 10_000, max_buffered: int = 2_000_000):
        self._client = client
        self.id: int = int(started["id"])
        self.lease: str = started["lease"]
        self.heartbeat_interval: float = float(started["heartbeat_interval"])
        self._setting = {k: started[k] for k in ("dataset", "seed", "missing_rate")}
        spec = started.get("spec") or {}
        self._setting.update({k: spec[k] for k in ("other_missing_rate", "split_by") if k in spec})
        self.interval, self.batch_size, self.max_buffered = interval, batch_size, max_buffered
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # log waits here when the sender is far behind
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._buffer = _Columns()
        self._sending = 0  # points taken by the sender, not yet written
        self._last_step = 0
        self._epochs_completed: int | None = None
        self._error: BaseException | None = None
        self._protocol: Protocol | None = None
        self.cancel_requested = False
        self.points_sent = 0
        self.ended: Run | None = None
        self._sender = threading.Thread(target=self._send_loop, name=f"missmod-live-run-{self.id}", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"LiveRun(id={self.id})"

    # --- logging ---------------------------------------------------------------------------

    def log(self, step: int | None = None, epoch: int | None = None, **metrics: float) -> None:
        """Log metric values. With `step` (the global optimiser step) they are per-step points,
        named `step/NAME`; without, per-epoch points at `epoch`. A non-finite value (a diverged
        loss) is stored as null."""
        if self._error is not None:
            raise RunLost(f"run {self.id}: {self._error}") from self._error
        if self.ended is not None:
            raise RuntimeError(f"run {self.id} has ended: nothing more can be logged")
        with self._lock:
            if step is not None:
                self._last_step = step = int(step)
                prefix = STEP_PREFIX
            else:
                if epoch is None:
                    raise ValueError("log needs a step (per-step points) or an epoch (per-epoch points)")
                step, prefix = self._last_step, ""
                self._epochs_completed = max(int(epoch), self._epochs_completed or 0)
            epoch = int(epoch) if epoch is not None else (self._epochs_completed or 0) + 1
            buffer = self._buffer
            for name, value in metrics.items():
                key = name if not prefix or name.startswith(prefix) else prefix + name
                index = buffer.names.get(key)
                if index is None:
                    index = buffer.names[key] = len(buffer.names)
                value = float(value)
                buffer.epoch.append(epoch)
                buffer.step.append(step)
                buffer.name.append(index)
                buffer.value.append(value if math.isfinite(value) else None)
            waiting = len(buffer)
            # Back-pressure: a loop that logs far faster than the server writes waits for room.
            while waiting + self._sending > self.max_buffered and self._error is None:
                self._wake.set()
                self._room.wait(1.0)
                waiting = len(self._buffer)
        if waiting >= self.batch_size:
            self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every point logged so far is written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = len(self._buffer) + self._sending
            if pending == 0 or self._error is not None:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id}: {pending} points still unsent after {timeout} s")
            self._wake.set()
            time.sleep(0.005)
        if self._error is not None:
            raise RunLost(f"run {self.id}: {self._error}") from self._error

    # --- the sender thread -----------------------------------------------------------------

    def _take(self) -> _Columns | None:
        """The next batch: at most `batch_size` points, so a request stays far below the server's
        MAX_REQUEST_BYTES however far the loop ran ahead."""
        with self._lock:
            if not len(self._buffer):
                return None
            if len(self._buffer) <= self.batch_size:
                batch, self._buffer = self._buffer, _Columns()
            else:
                batch = self._buffer.split(self.batch_size)
            self._sending = len(batch)
            return batch

    def _send_loop(self) -> None:
        last_write = time.monotonic()
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                while (batch := self._take()) is not None:
                    self._send(batch)
                    last_write = time.monotonic()
                if time.monotonic() - last_write >= self.heartbeat_interval and not stopping:
                    self._beat()
                    last_write = time.monotonic()
            except Exception as error:
                # A 4xx (the client's ApiError) will not change by sending again: 409 or 404, the run
                # is lost, ended or deleted; another, a refused batch. A 5xx or no answer: try again.
                status = getattr(error, "status", None)
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    self._error = error
                    with self._lock:
                        self._sending = 0
                        self._room.notify_all()
                    return
                # The server is away (restarting, network): the batch is kept and sent again.
                self._requeue_failed()
                time.sleep(min(self.interval * 5, 1.0))
            if stopping:
                with self._lock:
                    if not len(self._buffer):
                        return

    def _requeue_failed(self) -> None:
        with self._lock:
            self._sending = 0

    def _send(self, batch: _Columns) -> None:
        body = {"lease": self.lease, **batch.body()}
        if self._epochs_completed is not None:
            body["epochs_completed"] = self._epochs_completed
        try:
            answer = self._client._json("POST", f"/api/runs/{self.id}/live/points", json=body)
        except Exception:
            with self._lock:  # put the batch back in front, so no point is lost and the order holds
                self._buffer = _merge(batch, self._buffer)
            raise
        self.cancel_requested = bool(answer.get("cancel_requested"))
        with self._lock:
            self.points_sent += len(batch)
            self._sending = 0
            self._room.notify_all()

    def _beat(self) -> None:
        answer = self._client._json("POST", f"/api/runs/{self.id}/live/heartbeat", json={"lease": self.lease})
        self.cancel_requested = bool(answer.get("cancel_requested"))

    def _stop_sender(self, timeout: float | None) -> None:
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout)

    # --- the protocol ----------------------------------------------------------------------

    def protocol(self) -> Protocol:
        """missmod's split and missing mask for this run's setting; finishing with test
        predictions on it declares its digest, so the run pairs with missmod's runs."""
        if self._protocol is None:
            self._protocol = self._client.protocol(**self._setting)
        return self._protocol

    # --- the end ---------------------------------------------------------------------------

    def finish(self, test_predictions: Sequence[int] | None = None, confusion: Any = None, *,
               test_accuracy: float | None = None, val_accuracy: float | None = None,
               best_epoch: int | None = None, timeout: float | None = 60.0) -> Run:
        """Send every point left, then end the run as succeeded with its result. `test_predictions`:
        the predicted class of each test sample of missmod's split (run.protocol(), in its
        `test_groups` order): labels, matrix and accuracy follow, and the run is paired with
        missmod's (McNemar). `confusion`: {"classes", "counts"} or a K × K list, without predictions."""
        self.flush(timeout)
        self._stop_sender(timeout)
        body: dict[str, Any] = {"lease": self.lease}
        if test_predictions is not None:
            body["test_predictions"] = [int(p) for p in test_predictions]
        if self._protocol is not None:
            body["protocol_digest"] = self._protocol.digest
        if confusion is not None:
            if not hasattr(confusion, "keys"):
                counts = [[int(c) for c in row] for row in confusion]
                confusion = {"classes": [str(i) for i in range(len(counts))], "counts": counts}
            body["confusion"] = dict(confusion)
        optional = {"test_accuracy": test_accuracy, "val_accuracy": val_accuracy, "best_epoch": best_epoch}
        body.update({k: v for k, v in optional.items() if v is not None})
        self.ended = Run(**self._client._json("POST", f"/api/runs/{self.id}/live/finish", json=body))
        return self.ended

    def fail(self, error: str, detail: str | None = None, timeout: float | None = 10.0) -> Run:
        """End the run as failed with `error` (its points so far are kept)."""
        try:
            self.flush(timeout)
        except (TimeoutError, RunLost):
            pass
        self._stop_sender(timeout)
        body = {"lease": self.lease, "error": error[:2000]}
        if detail:
            body["detail"] = detail[-50_000:]
        self.ended = Run(**self._client._json("POST", f"/api/runs/{self.id}/live/fail", json=body))
        return self.ended

    def __enter__(self) -> "LiveRun":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.ended is not None:
            return
        if error is None:
            self.finish()
        elif isinstance(error, RunLost):
            self._stop_sender(1.0)
        else:
            message = f"{kind.__name__}: {error}" if str(error) else kind.__name__
            self.fail(message, "".join(traceback.format_exception(kind, error, trace)))


def _merge(first: _Columns, then: _Columns) -> _Columns:
    """`first`'s points, then `then`'s (their name indices renumbered into one list of names)."""
    merged = _Columns()
    for part in (first, then):
        names = list(part.names)
        for epoch, step, index, value in zip(part.epoch, part.step, part.name, part.value):
            key = names[index]
            merged.epoch.append(epoch)
            merged.step.append(step)
            merged.name.append(merged.names.setdefault(key, len(merged.names)))
            merged.value.append(value)
    return merged
