"""Dataset jobs through their whole life cycle with real worker processes: a job preprocessing a
RAVDESS-layout folder of real videos is cancelled mid-way; its worker is killed with SIGKILL
mid-way (the reconcile step queues it again and it completes exactly once, resuming from the
clips already decoded); its worker freezes long enough to be taken for dead (another worker
takes the job over, and the frozen one, woken, writes nothing). The life cycle's rules for
both kinds, row by row, are in tests/lifecycle/; the API's job routes in test_video_runs.py."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support import quick_to_reconcile, wait_for
from tests.support.videos import ravdess_copies

pytestmark = pytest.mark.faults


@pytest.fixture
def settings(embedded_settings, monkeypatch):
    """Decoding in the job's own process (one at a time): a steady pace the test can interrupt."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return quick_to_reconcile(embedded_settings, video_frame_size=32, preprocess_workers=1)


@pytest.fixture
def clips(settings) -> int:
    """144 real clips in RAVDESS's layout: a few seconds of work."""
    return ravdess_copies(settings.ravdess_dir)


def job_json(client, job_id: int) -> dict:
    return client.get(f"/api/jobs/{job_id}").json()


def start_preprocessing(client) -> int:
    response = client.post("/api/datasets/ravdess/preprocess")
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_until_part_done(client, job_id: int) -> dict:
    """Running, with some clips decoded (progress is written about every 0.5 s)."""
    return wait_for(lambda: (job := job_json(client, job_id))["state"] == "running" and job["done"] > 0 and job, 180,
                    interval=0.05, what=f"job {job_id} to decode its first clips")


def wait_until_ended(client, job_id: int, timeout: float = 180) -> dict:
    return wait_for(lambda: (job := job_json(client, job_id))["state"] in ("succeeded", "failed", "cancelled") and job,
                    timeout, interval=0.1, what=f"job {job_id} to end")


def node_of(worker: str) -> str:
    return worker.rpartition("/")[0]


def check_completed(job: dict, clips: int, *, resumed: bool) -> None:
    assert job["state"] == "succeeded", job["error_detail"]
    assert job["done"] == job["total"] == clips
    assert job["result"]["videos"] == clips and job["result"]["failed_clips"] == []
    if resumed:  # the last attempt decoded only what the earlier one had not
        assert 0 < job["result"]["decoded_now"] < clips


def test_cancel_of_a_running_job_stops_it_and_keeps_its_clips(settings, clips, client_for, start_worker):
    client = client_for(settings)
    worker = start_worker(settings)
    job_id = start_preprocessing(client)
    wait_until_part_done(client, job_id)
    cancelling = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["cancel_requested"] is True
    job = wait_until_ended(client, job_id)
    assert job["state"] == "cancelled" and 0 < job["done"] < job["total"] and job["result"] is None
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    assert f"dataset job {job_id} cancelled" in worker.log()
    # The clips decoded before the cancel are kept: a new job decodes only the rest.
    again = start_preprocessing(client)
    assert again != job_id
    check_completed(wait_until_ended(client, again), clips, resumed=True)


def test_a_job_whose_worker_is_killed_mid_way_is_requeued_and_completes_once(settings, clips, client_for, start_worker):
    client = client_for(settings)  # its reconcile step runs in this process
    first = start_worker(settings)
    job_id = start_preprocessing(client)
    wait_until_part_done(client, job_id)
    os.killpg(first.popen.pid, signal.SIGKILL)  # the worker and its pool process, no warning
    first.popen.wait(10)
    killed_at = job_json(client, job_id)
    assert killed_at["state"] == "running" and killed_at["done"] < killed_at["total"], killed_at
    # No worker holds it, and the filesystem broker cannot redeliver its id: the reconcile step
    # must see the heartbeat stop and queue it again, for the next worker to resume it.
    second = start_worker(settings)
    job = wait_until_ended(client, job_id)
    check_completed(job, clips, resumed=True)
    assert (job["attempts"], job["worker_losses"]) == (2, 1)
    assert node_of(job["worker"]) != node_of(killed_at["worker"])
    assert second.log().count(f"dataset job {job_id} succeeded") == 1
    assert f"dataset job {job_id} succeeded" not in first.log()


def test_a_job_taken_for_dead_is_not_run_twice_when_its_worker_wakes(settings, clips, client_for, start_worker):
    """A false "dead": the worker is frozen (SIGSTOP) past the heartbeat timeout, the job goes to
    another worker, then the frozen one wakes up mid-job. Its lease is gone: its next write
    fails and it stops without writing anything, and the job completes once, on the other."""
    client = client_for(settings)
    frozen = start_worker(settings)
    job_id = start_preprocessing(client)
    wait_until_part_done(client, job_id)
    os.killpg(frozen.popen.pid, signal.SIGSTOP)
    try:
        taker = start_worker(settings)
        taken = wait_for(lambda: (job := job_json(client, job_id))["attempts"] == 2 and job, 120,
                         what="the job taken over by the second worker")
        assert taken["state"] == "running" and taken["worker_losses"] == 1
    finally:
        os.killpg(frozen.popen.pid, signal.SIGCONT)
    job = wait_until_ended(client, job_id)
    check_completed(job, clips, resumed=False)
    assert node_of(job["worker"]) == node_of(taken["worker"]) and (job["attempts"], job["worker_losses"]) == (2, 1)
    wait_for(lambda: any(f"dataset job {job_id} " in line and "given to another worker" in line
                         for line in frozen.log().splitlines()), 60, what="the woken worker to find its lease lost")
    assert f"dataset job {job_id} succeeded" not in frozen.log()
    assert taker.log().count(f"dataset job {job_id} succeeded") == 1
