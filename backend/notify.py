"""Notifications to a webhook (setting WEBHOOK_URL): when a run fails, and when a sweep's last
run finishes.

The body is JSON with a Slack-compatible `text` (a Slack or Mattermost incoming webhook shows it
as is) and the event's facts for anything else (`event`, `run` or `sweep`, `url`). Events are
sent from a background thread, after the state they report is committed, and retried with
exponential backoff when the hook cannot be reached or answers 5xx/429; a hook that stays down
loses the event (logged), it never holds up training or a request.

The worker runs each run in a process of its own that ends with the run: it calls `flush` with
a bound before the process ends, so an event is not lost with it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import Any

import httpx

from .settings import Settings

log = logging.getLogger("missmod.notify")

ATTEMPTS = 5
FIRST_DELAY = 0.5  # seconds; doubled after each failed attempt (0.5, 1, 2, 4)
REQUEST_TIMEOUT = 5.0
FLUSH_TIMEOUT = 15.0  # what a finishing worker process waits, at most, for its events to go out


class Webhook:
    """Sends JSON events to one URL from a daemon thread, in order."""

    def __init__(self, url: str, *, attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY,
                 timeout: float = REQUEST_TIMEOUT):
        self.url, self.attempts, self.first_delay, self.timeout = url, attempts, first_delay, timeout
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event; returns at once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="webhook", daemon=True)
                self._thread.start()
        self._queue.put(event)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until every queued event was delivered or given up on; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                log.warning("webhook: %d event(s) not delivered before the process ends", self._queue.unfinished_tasks)
                return False
            time.sleep(0.02)
        return True

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                event = self._queue.get()
                try:
                    self._deliver(client, event)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> None:
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            try:
                response = client.post(self.url, json=event)
                if response.status_code < 300:
                    return
                retryable = response.status_code >= 500 or response.status_code == 429
                problem = f"answered {response.status_code}"
            except httpx.HTTPError as error:
                retryable, problem = True, f"{type(error).__name__}: {error}"
            if not retryable or attempt == self.attempts:
                log.warning("webhook: %s event not delivered (%s, attempt %d)", event.get("event"), problem, attempt)
                return
            time.sleep(delay)
            delay *= 2


@functools.cache
def _webhook(url: str) -> Webhook:
    return Webhook(url)


def webhook_for(settings: Settings) -> Webhook | None:
    return _webhook(settings.webhook_url) if settings.webhook_url else None


def run_failed(settings: Settings, run_id: int, name: str, error: str | None, sweep_id: int | None = None) -> None:
    hook = webhook_for(settings)
    if hook is None:
        return
    first_line = (error or "no reason recorded").strip().splitlines()[0][:300] if error else "no reason recorded"
    hook.send({"event": "run.failed", "text": f"missmod: run {run_id} ({name}) failed: {first_line}",
               "run": {"id": run_id, "name": name, "error": error, "sweep_id": sweep_id},
               "url": f"/runs/{run_id}"})


def sweep_finished(settings: Settings, sweep_id: int, name: str, progress: dict[str, Any]) -> None:
    hook = webhook_for(settings)
    if hook is None:
        return
    counts = ", ".join(f"{progress.get(state, 0)} {state}" for state in ("succeeded", "failed", "cancelled")
                       if progress.get(state))
    hook.send({"event": "sweep.finished", "text": f"missmod: sweep {sweep_id} ({name}) finished: {counts}",
               "sweep": {"id": sweep_id, "name": name, "progress": progress}, "url": f"/sweeps/{sweep_id}"})


def flush(settings: Settings, timeout: float = FLUSH_TIMEOUT) -> None:
    hook = webhook_for(settings)
    if hook is not None:
        hook.flush(timeout)
