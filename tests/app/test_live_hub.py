"""The live hub's guarantees (backend/live.py), each tested once against every kind of topic: a
run, a sweep, the workers and a dataset job. A Subject plays the writers of one topic (what a
worker, a sweep's runs or a dataset job commit) and says what a client should hold once it has
read the stream; every test checks the client holds exactly that, and for a run that no point
came twice.

- mid-poll join: a client joining while a poll is in flight, behind the cursor it reads from;
- slow subscriber: a client that stops reading is cut off, holds back nobody, and resumes;
- resume by Last-Event-ID: nothing resent, then what changed (and keep-alives meanwhile);
- cap: per client address and in all, 503 with Retry-After, the slot back when a stream ends;
- API restart: the client reconnects with its Last-Event-ID to a new process and misses nothing.

The first two drive a Hub in this process (their timing must be forced: a poll held open while
a client joins, a queue left unread); the others a real API process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx2 as httpx
import pytest
from sqlalchemy import update

from backend import live
from backend.db import session_factory, utcnow
from backend.jobs.models import DatasetJob
from backend.jobs.schemas import JobOut
from backend.jobs.stream import JobTopic
from backend.lifecycle.models import State
from backend.live import Hub
from backend.runs import recording, service as run_service
from backend.runs.models import Run, RunState
from backend.runs.stream import RunTopic
from backend.sweeps.models import Sweep
from backend.sweeps.stream import SweepTopic
from backend.workers import service as worker_service
from backend.workers.stream import ALL, WorkersTopic, workers_snapshot

WAIT = 90  # seconds for anything to arrive: the machine may be loaded; a pass takes far less
POLL = 0.05
HEARTBEAT_TIMEOUT = 3600.0


class Event(NamedTuple):
    event: str
    data: str
    id: str | None


def parse(chunk: bytes) -> list[Event]:
    """The events of encoded Server-Sent Events (what the hub queues)."""
    events, fields, last_id = [], {}, None
    for line in chunk.decode().replace("\r\n", "\n").split("\n"):
        if line == "":
            if "data" in fields:
                last_id = fields.get("id", last_id)
                events.append(Event(fields.get("event", "message"), fields["data"], fields.get("id")))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return events


class Chain:
    """Several clients' events read as one, as they grow (one client that reconnected)."""

    def __init__(self, *streams: list[Event]):
        self.streams = streams

    def __iter__(self):
        for events in self.streams:
            yield from events


def last_id(events: list[Event]) -> str | None:
    ids = [event.id for event in events if event.id]
    return ids[-1] if ids else None


# --- the topics, played ---------------------------------------------------------------------


class Subject:
    """One topic under test: its writers, and what a client that read its stream holds."""

    kind: str
    ends = True  # the stream ends by itself once the topic is finished
    may_repeat: frozenset[str] = frozenset()  # events a resumed client may be sent again

    def __init__(self, settings):
        self.settings = settings
        self.sessions = session_factory(settings.database_url)

    def create(self) -> None: ...
    def change(self, number: int) -> None: ...
    def finish(self) -> None: ...
    def fold(self, events: list[Event]) -> Any: ...
    def truth(self) -> Any: ...

    @property
    def path(self) -> str: ...

    def topic(self) -> live.Topic: ...

    def duplicates(self, events: list[Event]) -> list:
        return []


class RunSubject(Subject):
    kind = "run"
    may_repeat = frozenset({"run"})  # the run's own snapshot; never a point

    def create(self):
        with self.sessions() as session:
            run = Run(name="streamed", spec={"epochs": 100}, dataset="digits", method="mle", fusion="add",
                      missing_modality="bottom", missing_rate=0.5, seed=0, state=RunState.running,
                      created_at=utcnow(), heartbeat_at=utcnow())
            session.add(run)
            session.commit()
            self.key = run.id

    def change(self, number):
        with self.sessions() as session:
            recording.record_points(session, self.key, number, {"loss": 1 / number, "accuracy": number / 100},
                                    epochs_completed=number)

    def finish(self):
        with self.sessions() as session:
            recording.finish_run(session, self.key, cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                                 best_epoch=1, classes=["0", "1"], confusion=None, info={})

    def points(self, events):
        return [(p["epoch"], p["name"], p["value"]) for e in events if e.event == "metrics"
                for p in json.loads(e.data)["points"]]

    def fold(self, events):
        runs = [json.loads(e.data) for e in events if e.event == "run"]
        return sorted(set(self.points(events))), runs[-1]["state"] if runs else None

    def truth(self):
        with self.sessions() as session:
            points = run_service.metrics_after(session, self.key, 0, 100_000)
            return sorted((p.epoch, p.name, p.value) for p in points), session.get(Run, self.key).state

    def duplicates(self, events):
        return [point for point, count in Counter(self.points(events)).items() if count > 1]

    @property
    def path(self):
        return f"/api/runs/{self.key}/stream"

    def topic(self):
        return RunTopic(POLL)


class SweepSubject(Subject):
    kind = "sweep"
    RUNS = 3

    def create(self):
        with self.sessions() as session:
            sweep = Sweep(name="streamed", created_at=utcnow(), grid={"dataset": ["digits"], "seed": [0, 1, 2]})
            session.add(sweep)
            session.flush()
            runs = [Run(name=f"seed {seed}", spec={"epochs": 100}, dataset="digits", method="mle", fusion="add",
                        missing_modality="bottom", missing_rate=0.5, seed=seed, state=RunState.running,
                        created_at=utcnow(), heartbeat_at=utcnow(), sweep_id=sweep.id) for seed in range(self.RUNS)]
            session.add_all(runs)
            session.commit()
            self.key, self.run_ids = sweep.id, [run.id for run in runs]

    def change(self, number):
        with self.sessions() as session:  # the next epoch of one of its runs
            recording.record_points(session, self.run_ids[number % self.RUNS], number, {"loss": 1.0},
                                    epochs_completed=number)

    def finish(self):
        with self.sessions() as session:
            for run_id in self.run_ids:
                recording.finish_run(session, run_id, cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                                     best_epoch=1, classes=["0", "1"], confusion=None, info={})

    def fold(self, events):
        runs, progress = {}, None
        for event in events:
            if event.event == "runs":
                body = json.loads(event.data)
                if body["full"]:
                    runs.clear()
                runs.update({run["id"]: (run["state"], run["epochs_completed"]) for run in body["runs"]})
                for run_id in body["removed"]:
                    runs.pop(run_id, None)
            elif event.event == "progress":
                progress = json.loads(event.data)["done"]
        return runs, progress

    def truth(self):
        with self.sessions() as session:
            runs = {run.id: (run.state, run.epochs_completed) for run in session.query(Run).filter_by(sweep_id=self.key)}
        return runs, all(state in {"succeeded", "failed", "cancelled"} for state, _ in runs.values())

    @property
    def path(self):
        return f"/api/sweeps/{self.key}/stream"

    def topic(self):
        return SweepTopic(POLL)


class WorkersSubject(Subject):
    kind = "workers"
    ends = False  # the workers' stream lasts as long as its client

    def create(self):
        self.key = ALL
        with self.sessions() as session:
            worker_service.register_worker(session, worker_service.WorkerIdentity(
                name="worker-1", host="here", pid=1, slots=2, threads_per_run=1))

    def change(self, number):
        with self.sessions() as session:  # a slot starts or stops training (its `since` moves too)
            worker_service.set_slot(session, "worker-1", number % 2, "training" if number % 3 else "idle")

    def finish(self):
        with self.sessions() as session:
            worker_service.unregister_worker(session, "worker-1")

    def fold(self, events):
        snapshots = [json.loads(e.data) for e in events if e.event == "workers"]
        return snapshots[-1] if snapshots else None

    def truth(self):
        with self.sessions() as session:
            return json.loads(workers_snapshot(session, HEARTBEAT_TIMEOUT).model_dump_json())

    @property
    def path(self):
        return "/api/workers/stream"

    def topic(self):
        return WorkersTopic(POLL, HEARTBEAT_TIMEOUT)


class JobSubject(Subject):
    kind = "job"

    def create(self):
        with self.sessions() as session:
            job = DatasetJob(kind="preprocess", dataset="clips", params={}, state=State.running, total=100,
                             started_at=utcnow())
            session.add(job)
            session.commit()
            self.key = job.id

    def _set(self, **values):
        with self.sessions() as session:
            session.execute(update(DatasetJob).where(DatasetJob.id == self.key).values(**values))
            session.commit()

    def change(self, number):
        self._set(done=number, heartbeat_at=utcnow())

    def finish(self):
        self._set(state=State.succeeded, finished_at=utcnow(), result={"clips": 100})

    def fold(self, events):
        jobs = [json.loads(e.data) for e in events if e.event == "job"]
        return (jobs[-1] if jobs else None), any(e.event == "end" for e in events)

    def truth(self):
        with self.sessions() as session:
            job = session.get(DatasetJob, self.key)
            return json.loads(JobOut.model_validate(job).model_dump_json()), job.is_terminal

    @property
    def path(self):
        return f"/api/jobs/{self.key}/stream"

    def topic(self):
        return JobTopic(POLL)


SUBJECTS = [RunSubject, SweepSubject, WorkersSubject, JobSubject]
by_kind = pytest.mark.parametrize("subject_type", SUBJECTS, ids=[s.kind for s in SUBJECTS])


def run_async(coroutine):
    """asyncio.run in a thread of its own: Playwright's browser fixture (session-scoped) keeps an
    event loop running in the main thread once a browser test has run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def until(condition, what: str, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def holds_truth(subject: Subject, events: list[Event], what: str) -> None:
    await until(lambda: subject.fold(list(events)) == subject.truth(), what)


async def ended(subject: Subject, *streams: list[Event]) -> None:
    """The topic finished: a stream that ends by itself has its `end`; every client holds the truth."""
    await asyncio.to_thread(subject.finish)
    for events in streams:
        if subject.ends:
            await until(lambda: any(e.event == "end" for e in events), "the end of a stream")
        await holds_truth(subject, events, "the final state")
        assert subject.duplicates(events) == []


# --- in this process: a hub whose timing the test forces ---------------------------------------


class Reader:
    """One subscriber of the hub, read as a client would (or not read at all)."""

    def __init__(self, hub: Hub, kind: str, key, cursor=None, read: bool = True):
        self.hub, self.events = hub, []
        self.subscription = hub.subscribe(kind, key, cursor)
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._read()) if read else None

    async def _read(self):
        async for chunk in self.subscription.subscriber.events():
            self.events += parse(chunk)
        self.done.set()

    def drain(self) -> None:
        """What an unread subscriber's client would still receive: its queue, up to the close."""
        queue = self.subscription.subscriber.queue
        while not queue.empty():
            chunk = queue.get_nowait()
            if chunk is not None:
                self.events += parse(chunk)

    async def leave(self):
        self.hub.unsubscribe(self.subscription)
        if self.task is not None:
            self.task.cancel()


@by_kind
def test_a_subscriber_joining_mid_poll_behind_its_cursor_misses_nothing(subject_type, embedded_settings):
    """The poll reads from the earliest cursor of the subscribers it knew when it started; one
    that joins meanwhile, further back, is served by the next poll instead of being skipped."""
    subject = subject_type(embedded_settings)
    subject.create()
    subject.change(1)
    topic = subject.topic()
    read, gate = topic.read, {"armed": False, "started": threading.Event(), "release": threading.Event()}

    def held_read(session, wanted):
        if gate["armed"]:
            gate["armed"] = False
            gate["started"].set()
            assert gate["release"].wait(WAIT)
        return read(session, wanted)

    topic.read = held_read

    async def scenario():
        hub = Hub(subject.sessions, [topic])
        first = Reader(hub, subject.kind, subject.key)
        await holds_truth(subject, first.events, "the first subscriber's first state")
        cursor = first.subscription.subscriber.cursor
        await first.leave()  # the topic forgets its last reading with its last subscriber
        gate["armed"] = True
        resumed = Reader(hub, subject.kind, subject.key, cursor)  # its poll reads from this cursor
        assert await asyncio.to_thread(gate["started"].wait, WAIT)
        await asyncio.to_thread(subject.change, 2)
        late = Reader(hub, subject.kind, subject.key)  # joins mid-poll, from the very start
        gate["release"].set()
        await holds_truth(subject, late.events, "the late subscriber's state")
        await holds_truth(subject, Chain(first.events, resumed.events), "the resumed subscriber's state")
        await asyncio.to_thread(subject.change, 3)
        await ended(subject, late.events, Chain(first.events, resumed.events))
        await hub.close()

    run_async(scenario())


@by_kind
def test_a_slow_subscriber_is_cut_off_holds_back_nobody_and_resumes(subject_type, embedded_settings, monkeypatch):
    monkeypatch.setattr(live, "QUEUE_LIMIT", 3)
    subject = subject_type(embedded_settings)
    subject.create()

    async def scenario():
        hub = Hub(subject.sessions, [subject.topic()])
        slow = Reader(hub, subject.kind, subject.key, read=False)
        fast = Reader(hub, subject.kind, subject.key)
        number = 0
        while not slow.subscription.subscriber.closed:
            number += 1
            assert number <= 10, "the slow subscriber was never cut off"
            await asyncio.to_thread(subject.change, number)
            await holds_truth(subject, fast.events, f"change {number} at the fast subscriber")
        assert hub.watching(subject.kind) == {subject.key: 1}  # the slow one has left the topic
        slow.drain()
        assert 0 < len(slow.events) and last_id(slow.events) is not None
        # Its client reconnects with the last event id it received and misses nothing.
        resumed = Reader(hub, subject.kind, subject.key, subject.topic().cursor_from(last_id(slow.events)))
        await asyncio.to_thread(subject.change, number + 1)
        await holds_truth(subject, Chain(slow.events, resumed.events), "the resumed slow subscriber's state")
        await ended(subject, fast.events, Chain(slow.events, resumed.events))
        await hub.close()

    run_async(scenario())


# --- against a real API process ----------------------------------------------------------------


class Stream:
    """One client of a real API's stream: its events (and keep-alive comments), reconnecting
    with its Last-Event-ID whenever the connection ends before the stream's end."""

    def __init__(self, base: str, path: str, last_event_id: str | None = None, reconnect: bool = False):
        self.base, self.path, self.reconnect = base, path, reconnect
        self.events: list[Event] = []
        self.pings = 0
        self.connections = 0
        self.last_event_id = last_event_id
        self.task = asyncio.create_task(self._follow())

    async def _follow(self):
        while True:
            try:
                await self._read()
            except httpx.HTTPError:
                pass
            if not self.reconnect or any(e.event == "end" for e in self.events):
                return
            await asyncio.sleep(0.2)

    async def _read(self):
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(WAIT, connect=10)) as client:
            async with client.stream("GET", self.path, headers=headers) as response:
                assert response.status_code == 200, response.status_code
                self.connections += 1
                fields: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        self.pings += 1
                    elif line == "":
                        if "data" in fields:
                            self.last_event_id = fields.get("id", self.last_event_id)
                            self.events.append(Event(fields.get("event", "message"), fields["data"], fields.get("id")))
                        fields = {}
                    else:
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value

    async def close(self):
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, AssertionError):
            pass


@by_kind
def test_a_client_resuming_with_its_last_event_id_is_sent_only_what_changed(subject_type, embedded_settings,
                                                                             start_server):
    settings = embedded_settings.model_copy(update={"stream_poll_interval": POLL, "stream_keepalive_seconds": 0.5})
    subject = subject_type(settings)
    subject.create()
    subject.change(1)
    base = start_server(settings)

    async def scenario():
        first = Stream(base, subject.path)
        await holds_truth(subject, first.events, "the first connection's state")
        await first.close()
        resumed = Stream(base, subject.path, last_event_id=last_id(first.events))
        # Nothing changed: the stream only keeps itself alive until something does.
        await until(lambda: resumed.pings > 0, "a keep-alive")
        before_change = len(resumed.events)
        await asyncio.to_thread(subject.change, 2)
        await holds_truth(subject, Chain(first.events, resumed.events), "the resumed connection's state")
        assert {e.event for e in resumed.events[:before_change]} <= subject.may_repeat, resumed.events
        assert not any(e.event == "runs" and json.loads(e.data)["full"] for e in resumed.events), resumed.events
        await ended(subject, Chain(first.events, resumed.events))
        await resumed.close()

    run_async(scenario())


@by_kind
def test_streams_above_the_caps_are_refused_with_retry_after(subject_type, embedded_settings, start_server):
    """Two per client address, three in all; the slot comes back when a stream ends."""
    settings = embedded_settings.model_copy(update={"max_streams_per_client": 2, "max_streams": 3})
    subject = subject_type(settings)
    subject.create()
    base = start_server(settings)

    async def scenario():
        clients = {address: httpx.AsyncClient(base_url=base, timeout=WAIT,
                                              transport=httpx.AsyncHTTPTransport(local_address=address))
                   for address in ("127.0.0.1", "127.0.0.2")}

        async def open_from(address):
            client = clients[address]
            return await client.send(client.build_request("GET", subject.path), stream=True)

        held = [await open_from("127.0.0.1"), await open_from("127.0.0.1")]
        refused = await open_from("127.0.0.1")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "this client holds its maximum of 2" in (await refused.aread()).decode()
        held.append(await open_from("127.0.0.2"))  # another address still gets one
        assert [response.status_code for response in held] == [200] * 3
        refused = await open_from("127.0.0.2")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "this server holds its maximum of 3" in (await refused.aread()).decode()
        await held.pop(0).aclose()
        # Its slot comes back once the server sees the client gone.
        for _ in range(WAIT * 10):
            again = await open_from("127.0.0.1")
            await again.aclose()
            if again.status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the slot of a closed stream never came back")
        for response in held:
            await response.aclose()
        for client in clients.values():
            await client.aclose()

    run_async(scenario())


@by_kind
def test_a_client_follows_a_topic_across_an_api_restart(subject_type, embedded_settings, start_server):
    settings = embedded_settings.model_copy(update={"stream_poll_interval": POLL})
    subject = subject_type(settings)
    subject.create()
    subject.change(1)
    base = start_server(settings)
    port = int(base.rsplit(":", 1)[1])

    async def scenario():
        stream = Stream(base, subject.path, reconnect=True)
        await holds_truth(subject, stream.events, "the state before the restart")
        await asyncio.to_thread(base.process.stop)
        await asyncio.to_thread(subject.change, 2)  # while no API is up
        await asyncio.to_thread(start_server, settings, port)
        await until(lambda: stream.connections >= 2, "the reconnection")
        await holds_truth(subject, stream.events, "the state after the restart")
        await asyncio.to_thread(subject.change, 3)
        await holds_truth(subject, stream.events, "a change after the restart")
        await ended(subject, stream.events)
        await stream.close()

    run_async(scenario())
