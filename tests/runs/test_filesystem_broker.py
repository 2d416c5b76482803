"""The folder broker of the embedded default (backend/filesystem_broker.py): a reader never sees a
half-written message, and a file that is not a message is set aside instead of ending the worker."""

from __future__ import annotations

import threading
from queue import Empty

from backend.queue import make_celery

from tests.runs.test_end_to_end import SPEC, check_trained_run


def test_a_reader_polling_beside_a_writer_never_sees_a_partial_message(embedded_settings):
    app = make_celery(embedded_settings)
    count, body = 400, "x" * 200_000  # large enough that a write is not one syscall's worth
    got: list[int] = []
    errors: list[BaseException] = []
    with app.connection_for_write() as writer_connection, app.connection_for_read() as reader_connection:
        writer, reader = writer_connection.default_channel, reader_connection.default_channel
        assert type(reader).__module__ == "backend.filesystem_broker"

        def write():
            for i in range(count):
                writer._put("race", {"i": i, "body": body})

        def read():
            try:
                while len(got) < count:
                    try:
                        got.append(reader._get("race")["i"])
                    except Empty:
                        pass
            except BaseException as error:  # noqa: BLE001  (reported by the test thread)
                errors.append(error)

        threads = [threading.Thread(target=read), threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not errors, errors
    assert sorted(got) == list(range(count))
    assert not (embedded_settings.broker_dir / "rejected").exists()


def test_bad_message_files_are_set_aside_and_the_worker_trains_the_real_run(embedded_settings, client_for,
                                                                             start_worker):
    client = client_for(embedded_settings)
    run = client.post("/api/runs", json=SPEC).json()
    queue = embedded_settings.broker_dir / "queue"
    [real] = list(queue.iterdir())
    # Named to sort before the real message: the worker meets them first, as it starts.
    bad = {"0_empty.missmod.msg": b"", "0_truncated.missmod.msg": real.read_bytes()[:40]}
    for name, content in bad.items():
        (queue / name).write_bytes(content)

    worker = start_worker(embedded_settings)
    check_trained_run(client, run["id"], SPEC["epochs"])
    rejected = embedded_settings.broker_dir / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == sorted(bad)
    assert [p.read_bytes() for p in sorted(rejected.iterdir())] == [bad[n] for n in sorted(bad)]
    assert list(queue.iterdir()) == []
    assert worker.popen.poll() is None, worker.log()[-3000:]
    log = worker.log()
    assert "Unrecoverable error" not in log
    for name in bad:
        assert f"Broker message file {name} is not a message" in log

    # Still consuming after them: a second run trains too.
    second = client.post("/api/runs", json={**SPEC, "seed": 1}).json()
    check_trained_run(client, second["id"], SPEC["epochs"])
    assert worker.popen.poll() is None, worker.log()[-3000:]
