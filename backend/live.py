"""What every live stream (a run's, a sweep's) shares: its subscriber queue and the caps on how
many one process holds.

A stream holds no database connection while it waits: one poller per run or sweep reads the
database with a short session and fans the events out to the queues of every client watching
it (backend/runs/stream.py, backend/sweeps/stream.py). So a hundred tabs on one run cost one
query per poll, and the pool stays free for the rest of the API. Above the caps a new stream
gets 503 with Retry-After instead of starving the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread

from fastapi import HTTPException, status

log = logging.getLogger("missmod.stream")

RETRY_AFTER_SECONDS = 5
# Events a client may fall behind by (a tab in the background, a slow link) before its stream
# is closed; the page reconnects from its cursor and misses nothing.
QUEUE_LIMIT = 200
_CLOSE = None


# Threads that look up the run or sweep a new stream is for. Their own few, not the threadpool
# every other request shares: a page full of tabs reopening 200 streams at once must not keep
# /api/runs waiting behind 200 lookups.
OPENING_THREADS = 4


class StreamSlots:
    """Caps on the live streams of this process: in all, and per client address."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self._held: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()  # taken from the routes' threads and from the event loop
        self._opening: anyio.CapacityLimiter | None = None  # made inside the event loop, on first use

    async def look_up(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` (a short database lookup) in one of the threads that open streams."""
        if self._opening is None:
            self._opening = anyio.CapacityLimiter(OPENING_THREADS)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._opening)

    @property
    def held(self) -> int:
        return self._count

    def take(self, client: str) -> "StreamSlot":
        """A slot for one stream, or HTTPException 503 with Retry-After."""
        with self._lock:
            if self._count >= self.total:
                reason = f"this server holds its maximum of {self.total} live streams"
            elif self._held.get(client, 0) >= self.per_client:
                reason = f"this client holds its maximum of {self.per_client} live streams"
            else:
                self._count += 1
                self._held[client] = self._held.get(client, 0) + 1
                return StreamSlot(self, client)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{reason}; try again shortly",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _give_back(self, client: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._held.get(client, 1) - 1
            if left:
                self._held[client] = left
            else:
                self._held.pop(client, None)


class StreamSlot:
    def __init__(self, slots: StreamSlots, client: str):
        self._slots, self._client, self._held = slots, client, True

    def release(self) -> None:
        """Idempotent: called when the stream ends and again after the response, whichever comes."""
        if self._held:
            self._held = False
            self._slots._give_back(self._client)


class Subscriber:
    """One client's stream: the events the poller hands it, in order, already encoded (the
    same bytes go to every client at the same point of the stream)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def send(self, event: bytes) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            log.info("a live stream fell %s events behind; closed (the client reconnects from its cursor)",
                     QUEUE_LIMIT)
            self.close()
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(_CLOSE)

    async def events(self) -> AsyncIterator[bytes]:
        while True:
            event = await self.queue.get()
            if event is _CLOSE:
                return
            yield event


def client_address(request) -> str:
    return request.client.host if request.client else "unknown"


async def cancel_task(task: asyncio.Task | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
