"""A run's database writes, done in order on a thread of their own, so that the training loop
hands them over and carries on instead of waiting for each commit.

Through a worker, every epoch of a tiny run used to wait for its points, its system figures and
its progress to be committed (and, while a page watched it, for the API's readers to let go of
SQLite's lock): on digits, where an epoch takes a few hundredths of a second, that was a good
part of the run's time (docs/benchmarks.md). Now the loop waits only where it must:

- before a checkpoint (`wait`): every point reported before a checkpoint is committed before the
  checkpoint is written, so a resumed run, which does not report those epochs again, lacks none;
- before the run's result is stored (leaving the `with` block): the result comes after every point;
- where the next step depends on a write's answer (a study's pruner, TrialRecorder).

A write that fails (the lease lost, the database unreachable beyond its patience) is raised on
the training thread at its next call (`raise_if_failed`, which the loop reaches at every step
through `should_abort`); the writes after it are dropped, as the run ends there.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("missmod.worker")


class WriteBehind:
    def __init__(self, name: str):
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is None:
                    return
                if self._error is None and not self._dropping:
                    write()
            except BaseException as error:  # handed to the training thread, which ends the run with it
                self._error = error
            finally:
                self._queue.task_done()

    def submit(self, write: Callable[[], object]) -> None:
        """Queue `write` after the ones before it."""
        self.raise_if_failed()
        self._queue.put(write)

    def wait(self) -> None:
        """Return once every write submitted so far is done; raise the first that failed."""
        self._queue.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "WriteBehind":
        self._thread.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            try:
                self.wait()
            finally:
                self._stop()
            return
        # The run ended with an error: what is still queued would only add to it.
        self._dropping = True
        self._stop()

    def _stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            log.warning("%s: a write is still waiting for the database; left to finish on its own",
                        self._thread.name)
