"""Every live stream (a run's, a sweep's, the workers', a dataset job's) is served by one hub:
its subscriber queues, its pollers and the caps on how many streams one process holds.

A stream holds no database connection while it waits: one poller per kind of topic reads every
topic of that kind being watched with a short session, from the earliest cursor its subscribers
are at, and fans the events out to the queues of every client watching (Hub). Each kind says
only how it is read and what a subscriber at a cursor is sent (a Topic: backend/runs/stream.py,
backend/sweeps/stream.py, backend/workers/stream.py, backend/jobs/stream.py); events are encoded
once per cursor, so a hundred tabs on one run cost one query per poll and one encoding. Every
kind has the same caps (503 with Retry-After above them), Last-Event-ID resume and keep-alives.

What the hub guarantees, each with its test (tests/app/test_live_hub.py, run against every kind):
- a poll reads from the earliest cursor of a topic's subscribers, and a subscriber that joins
  while a poll is in flight, behind what it read, is served by the next poll, never skipped;
- a subscriber's cursor advances when its events are queued, so a slow client holds back
  nobody: it is cut off QUEUE_LIMIT events behind and resumes from its Last-Event-ID;
- subscribers at the same cursor get the same bytes (the chunk's key is the cursor itself);
- cursors are made from the database's content (point ids, digests), so a client resumes
  across an API restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
from fastapi import HTTPException, status
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

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
    same bytes go to every client at the same cursor)."""

    def __init__(self, cursor: Hashable = None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.cursor = cursor  # what it has been sent (Topic)

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


# --- the hub ------------------------------------------------------------------------------------

DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError)


def encode(event: str, data: str, id: str | None = None) -> bytes:
    return ServerSentEvent(data=data, event=event, id=id).encode()


def digest(*parts: Any) -> str:
    """A short token for a state (a sweep's runs, the workers' snapshot), made from its content:
    the same state gives the same token in every API process and after a restart, so a client's
    Last-Event-ID still says what it has seen."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def token_from(last_event_id: str | None) -> str | None:
    """A digest() a client sends back as its Last-Event-ID; None for anything else (the client
    is then sent the whole state)."""
    if last_event_id and len(last_event_id) == 16 and all(c in "0123456789abcdef" for c in last_event_id):
        return last_event_id
    return None


@dataclass(frozen=True)
class Delivery:
    """What one subscriber at one cursor is sent from one reading."""
    chunk: bytes  # the encoded events (b"": nothing new)
    cursor: Hashable  # where the subscriber is once it has them
    ended: bool = False  # nothing will follow: the stream closes after the chunk


class Topic(ABC):
    """One kind of live topic (a run, a sweep, the workers, a dataset job): how one poll reads
    the topics of that kind being watched, and what a subscriber at a given cursor is sent from
    what was read. The hub does everything else, the same way for every kind.

    A cursor says what a subscriber has seen (hashable, from its Last-Event-ID when it
    reconnects; None: nothing). Subscribers at the same cursor are sent the same bytes, encoded
    once."""

    kind: str

    def __init__(self, poll_interval: float):
        self.poll_interval = poll_interval

    @abstractmethod
    def read(self, session: Session, wanted: dict[Hashable, tuple[Hashable, Any]]) -> dict[Hashable, Any]:
        """Key → its reading, for every key of `wanted` (key → (the earliest cursor a
        subscriber of it is at, the previous reading or None)). In a thread, one short session."""

    @abstractmethod
    def deliver(self, reading: Any, cursor: Hashable) -> Delivery:
        """What a subscriber at `cursor` is sent from `reading` (pure: it is computed once per cursor)."""

    def cursor_from(self, last_event_id: str | None) -> Hashable:
        """The cursor of a client that reconnects with this Last-Event-ID (None: it has nothing)."""
        return token_from(last_event_id)

    def earliest(self, cursors: Iterable[Hashable]) -> Hashable:
        """The cursor a poll reads from so that every subscriber gets what it has not seen."""
        return None

    def covers(self, reading: Any, cursor: Hashable) -> bool:
        """Whether `reading` holds everything a subscriber at `cursor` is owed: not when it joined
        while the poll read the database from a later cursor than its own (the next poll serves it)."""
        return True

    def more_waiting(self, reading: Any) -> bool:
        """The reading stopped at a batch's limit: poll again at once instead of after an interval."""
        return False


class Subscription(NamedTuple):
    kind: str
    key: Hashable
    subscriber: Subscriber


class _Poller:
    """The one poller of a kind of topic in this process: each poll reads every topic of that
    kind being watched, in one short session, and fans out what it read."""

    def __init__(self, sessions: sessionmaker, topic: Topic):
        self.sessions, self.topic = sessions, topic
        self.watching: dict[Hashable, set[Subscriber]] = {}
        self.last: dict[Hashable, Any] = {}  # key → its latest reading, for a subscriber that joins
        self.task: asyncio.Task | None = None
        self.woken = asyncio.Event()

    def join(self, key: Hashable, subscriber: Subscriber) -> None:
        self.watching.setdefault(key, set()).add(subscriber)
        reading = self.last.get(key)
        if reading is not None and self.topic.covers(reading, subscriber.cursor):
            self._deliver(key, subscriber, reading, {})  # at once, from the latest poll
        else:
            self.woken.set()  # served by a poll at once, not after the rest of an interval
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._poll_forever(), name=f"live-{self.topic.kind}")

    def leave(self, key: Hashable, subscriber: Subscriber) -> None:
        subscriber.closed = True
        watchers = self.watching.get(key)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self.watching[key]
                self.last.pop(key, None)

    def _read(self, wanted: dict[Hashable, tuple[Hashable, Any]]) -> dict[Hashable, Any]:
        with self.sessions() as session:
            return self.topic.read(session, wanted)

    async def _poll_forever(self) -> None:
        while self.watching:
            self.woken.clear()
            wanted = {key: (self.topic.earliest(s.cursor for s in watchers), self.last.get(key))
                      for key, watchers in self.watching.items()}
            try:
                readings = await run_in_threadpool(self._read, wanted)
            except DATABASE_ERRORS as error:
                # End the streams cleanly; the clients reconnect from their cursors once the database is back.
                log.warning("live streams of %s %s ended: database unreachable (%s)", self.topic.kind,
                            sorted(map(str, wanted)), type(error).__name__)
                self._end_all()
                return
            except Exception:
                # Never a stream left waiting on a poller that is gone: each client reconnects.
                log.exception("live streams of %s %s ended: their poll failed", self.topic.kind,
                              sorted(map(str, wanted)))
                self._end_all()
                return
            more_waiting = False
            for key, reading in readings.items():
                if key not in self.watching:
                    continue  # every subscriber left while it was read
                self.last[key] = reading
                more_waiting |= self.topic.more_waiting(reading)
                chunks: dict[Hashable, Delivery] = {}
                for subscriber in list(self.watching[key]):
                    if not self.topic.covers(reading, subscriber.cursor):
                        # Joined during this poll, behind the cursor it read from: what lies in
                        # between was not read. Sending this reading would skip it; the next poll
                        # (at once) reads from the subscriber's own cursor.
                        self.woken.set()
                        continue
                    self._deliver(key, subscriber, reading, chunks)
            if not more_waiting:
                try:
                    await asyncio.wait_for(self.woken.wait(), self.topic.poll_interval)
                except TimeoutError:
                    pass

    def _end_all(self) -> None:
        for watchers in list(self.watching.values()):
            for subscriber in list(watchers):
                subscriber.close()
        self.watching.clear()
        self.last.clear()

    def _deliver(self, key: Hashable, subscriber: Subscriber, reading: Any, chunks: dict[Hashable, Delivery]) -> None:
        delivery = chunks.get(subscriber.cursor)
        if delivery is None:
            delivery = chunks[subscriber.cursor] = self.topic.deliver(reading, subscriber.cursor)
        if delivery.chunk:
            subscriber.send(delivery.chunk)
        # Advanced when queued, not when written out: a slow client never holds back the cursor
        # a poll reads from (it is cut off at QUEUE_LIMIT instead, and resumes from its cursor).
        subscriber.cursor = delivery.cursor
        if delivery.ended or subscriber.closed:  # finished, or cut off for falling behind
            subscriber.close()
            self.leave(key, subscriber)


class Hub:
    """Every live stream of this process: one poller per kind of topic (a run, a sweep, the
    workers, a dataset job), started by the first subscriber and ended with the last."""

    def __init__(self, sessions: sessionmaker, topics: Iterable[Topic]):
        self.pollers = {topic.kind: _Poller(sessions, topic) for topic in topics}

    def subscribe(self, kind: str, key: Hashable, cursor: Hashable = None) -> Subscription:
        poller = self.pollers[kind]
        subscriber = Subscriber(cursor if cursor is not None else poller.topic.cursor_from(None))
        poller.join(key, subscriber)
        return Subscription(kind, key, subscriber)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.pollers[subscription.kind].leave(subscription.key, subscription.subscriber)

    def watching(self, kind: str) -> dict[Hashable, int]:
        """Key → how many subscribers watch it (what the caps and tests look at)."""
        return {key: len(watchers) for key, watchers in self.pollers[kind].watching.items()}

    async def close(self) -> None:
        for poller in self.pollers.values():
            await cancel_task(poller.task)

    async def events(self, kind: str, key: Hashable, cursor: Hashable, on_end: Callable[[], None]) -> AsyncIterator[bytes]:
        """One client's stream: subscribed when the response starts, unsubscribed when it ends
        (the client left, the topic ended, or the client fell too far behind)."""
        subscription = self.subscribe(kind, key, cursor)
        try:
            async for chunk in subscription.subscriber.events():
                yield chunk
        finally:
            self.unsubscribe(subscription)
            on_end()



async def open_stream(request, kind: str, key: Hashable, cursor: Hashable = None,
                      exists: Callable[[sessionmaker, Any], None] | None = None) -> EventSourceResponse:
    """The response of every live stream: the topic looked up in a short session of its own
    (a 404 before any slot is taken), a slot under the caps (503 with Retry-After), then the
    hub's events with a keep-alive comment every
    STREAM_KEEPALIVE_SECONDS."""
    state = request.app.state
    if exists is not None:
        await state.stream_slots.look_up(exists, state.sessions, key)
    slot = state.stream_slots.take(client_address(request))
    return EventSourceResponse(state.live_hub.events(kind, key, cursor, slot.release),
                               ping=state.settings.stream_keepalive_seconds,
                               background=BackgroundTask(slot.release))
