"""Many hosts, one truth, with real processes: two "hosts" on this machine — each with its own
VAR_DIR, DATA_DIR and worker process — share PostgreSQL, Redis and one artifact store served by
a real S3-compatible server process on loopback (moto's; MinIO in docker-compose.yml). A run
killed with -9 on host A resumes on host B from A's checkpoint; features extracted by a job on
host B train through host A's API; deleting a run removes its files from the store. And a sweep
submitted while Redis is down is saved, waits for the broker, and runs once it is back."""

from __future__ import annotations

import os
import signal
import shutil
from pathlib import Path

import pytest

from backend.settings import Settings
from backend.storage import store_for
from bench.points import assert_exactly_once, run_expected_points

from tests.runs.test_end_to_end import wait_for_state
from tests.runs.test_faults import EPOCHS, check_resumed, run_json, start_long_run, wait_for_epochs
from tests.support import wait_for
from tests.support.faults import PrivateRedis
from tests.support.object_store import ACCESS_KEY, SECRET_KEY
from tests.support.videos import ravdess_tree

pytestmark = [pytest.mark.faults, pytest.mark.services]


def host(shared: Settings, root: Path, **changes) -> Settings:
    """One host's settings: its own folders, the shared database, broker and artifact store, and
    the reconcile step and checkpoints on a test's time scale (tests/support: quick_to_reconcile)."""
    settings = Settings(
        var_dir=root / "var", data_dir=root / "data", database_url=shared.database_url,
        broker_url=shared.broker_url, task_queue=shared.task_queue, artifact_url=shared.artifact_url,
        s3_endpoint_url=shared.s3_endpoint_url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        heartbeat_interval=0.5, heartbeat_timeout=4.0, reconcile_interval=0.5, stream_poll_interval=0.1,
        checkpoint_interval=0.0, **changes)
    settings.make_dirs()
    return settings


@pytest.fixture
def shared(service_settings, s3_server) -> Settings:
    return s3_server.settings_for(service_settings, s3_server.new_bucket())


def test_a_run_killed_on_host_a_resumes_on_host_b_from_a_checkpoint_and_delete_empties_the_store(
        shared, tmp_path, client_for, start_worker):
    host_a, host_b = host(shared, tmp_path / "a"), host(shared, tmp_path / "b")
    store = store_for(host_a)
    api_a = client_for(host_a)
    worker_a = start_worker(host_a)
    run_id = start_long_run(api_a)
    wait_for_epochs(api_a, run_id, 3)
    listed = {a["path"] for a in api_a.get(f"/api/runs/{run_id}/artifacts").json()}
    assert "checkpoints/attempt-1.pt" in listed  # in the shared store, not on host A's disk
    assert not (host_a.artifact_dir / "runs").exists()
    os.killpg(worker_a.popen.pid, signal.SIGKILL)
    worker_a.popen.wait(10)
    killed_at = run_json(api_a, run_id)
    assert killed_at["state"] == "running" and killed_at["epochs_completed"] < EPOCHS

    start_worker(host_b)  # the reconcile step queues it again; only host B can take it
    run = check_resumed(api_a, run_id, at_least_epoch=2)  # every epoch's points exactly once
    assert run["attempts"] == 2 and run["worker_losses"] == 1
    assert run["worker"].rpartition("/")[0] != killed_at["worker"].rpartition("/")[0]
    assert not (host_b.artifact_dir / "runs").exists()  # host B never had A's checkpoint on its disk

    # host B's API lists and serves the files whichever host wrote them
    api_b = client_for(host_b)
    files = {a["path"]: a["size"] for a in api_b.get(f"/api/runs/{run_id}/artifacts").json()}
    # attempt 1's checkpoint is history; the model bundle of the selected epoch is in the store too
    assert set(files) == {"checkpoints/attempt-2.pt", "confusion.json", "model.zip"}
    confusion = api_b.get(f"/api/runs/{run_id}/artifacts/confusion.json").json()
    from_database = api_a.get(f"/api/runs/{run_id}/confusion").json()
    assert (confusion["counts"], confusion["epoch"]) == (from_database["counts"], from_database["epoch"])
    download = api_b.get(f"/api/runs/{run_id}/artifacts/checkpoints/attempt-2.pt")
    assert download.status_code == 200 and len(download.content) == files["checkpoints/attempt-2.pt"]
    assert api_b.get(f"/api/runs/{run_id}/artifacts/..%2F..%2Fdatasets").status_code == 400

    assert api_b.delete(f"/api/runs/{run_id}").status_code == 204
    assert store.list(f"runs/{run_id}") == []


def test_features_extracted_by_a_job_on_host_b_train_through_the_api_of_host_a(
        shared, tmp_path, tmp_path_factory, client_for, start_worker, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    video = {"video_frame_size": 32, "preprocess_workers": 2}
    host_a, host_b = host(shared, tmp_path / "a", **video), host(shared, tmp_path / "b", **video)
    source = tmp_path_factory.mktemp("raw")
    ravdess_tree(source / "ravdess", actors=range(1, 7))
    shutil.copytree(source / "ravdess", host_b.ravdess_dir)  # the raw videos are on host B only
    api_a, api_b = client_for(host_a), client_for(host_b)
    name = "ravdess-resnet34-random"
    assert name not in {d["name"] for d in api_a.get("/api/datasets").json()}

    worker_b = start_worker(host_b)
    job = api_b.post("/api/datasets/ravdess/features", json={"backbone": "resnet34", "batch_size": 128})
    assert job.status_code == 202, job.text

    def finished():
        current = api_b.get(f"/api/jobs/{job.json()['id']}").json()
        return current if current["state"] in ("succeeded", "failed", "cancelled") else None

    done = wait_for(finished, 300, interval=0.2, what="the feature extraction job")
    assert done["state"] == "succeeded", done["error_detail"]
    assert done["result"]["features_dataset"] == name and done["result"]["key"] == f"datasets/features/{name}.npz"
    worker_b.stop()  # from here on only host A works

    listed = {d["name"]: d for d in api_a.get("/api/datasets").json()}
    assert listed[name]["shared"] is True and listed[name]["error"] is None
    assert listed[name]["source"] == "features" and listed[name]["n_groups"] == 36
    assert not (host_a.data_dir / "features" / f"{name}.npz").exists()
    start_worker(host_a)
    created = api_a.post("/api/runs", json={"dataset": name, "method": "mle", "fusion": "add",
                                            "missing_modality": "audio", "missing_rate": 0.5, "epochs": 2})
    assert created.status_code == 201, created.text
    run = wait_for_state(api_a, created.json()["id"], {"succeeded", "failed"}, timeout=180)
    assert run["state"] == "succeeded", run["error_detail"]
    # fetched once into host A's DATA_DIR, byte for byte what host B made
    fetched = host_a.data_dir / "features" / f"{name}.npz"
    assert fetched.read_bytes() == (host_b.data_dir / "features" / f"{name}.npz").read_bytes()


def test_a_sweep_submitted_while_redis_is_down_waits_for_it_then_all_its_runs_succeed(
        shared, tmp_path, client_for, start_worker):
    """Our own Redis (never the machine's shared one): stopped, a sweep of 12 runs is submitted
    (202, all queued awaiting the broker, none failed; the same POST again creates nothing),
    Redis is started again, and the reconcile step sends every id: all 12 succeed."""
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        settings = host(shared.model_copy(update={"broker_url": redis.url}), tmp_path / "a")
        client = client_for(settings)
        start_worker(settings)
        redis.stop()
        grid = {"dataset": "digits", "method": ["mle", "lower_bound"], "fusion": "add", "missing_modality": "bottom",
                "missing_rate": [0.3, 0.6, 0.9], "seed": [0, 1], "epochs": 2}
        headers = {"Idempotency-Key": "sweep-during-redis-outage"}
        response = client.post("/api/sweeps", json=grid, headers=headers)
        assert response.status_code == 202, response.text
        sweep = response.json()
        assert len(sweep["run_ids"]) == 12 and sweep["awaiting_broker"] == sweep["run_ids"]
        runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 50}).json()["items"]
        assert {(r["state"], r["awaiting_broker"]) for r in runs} == {("queued", True)}
        again = client.post("/api/sweeps", json=grid, headers=headers)  # a script retrying its POST
        assert again.status_code == 200 and again.json()["id"] == sweep["id"]
        assert client.get("/api/runs").json()["total"] == 12

        redis.start()
        for run_id in sweep["run_ids"]:
            run = wait_for_state(client, run_id, {"succeeded", "failed", "cancelled"}, timeout=180)
            assert (run["state"], run["attempts"], run["awaiting_broker"]) == ("succeeded", 1, False), run
            points = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
            assert_exactly_once(points, run_expected_points(run))  # both epochs' points, each once
        progress = client.get(f"/api/sweeps/{sweep['id']}").json()["progress"]
        assert (progress["succeeded"], progress["failed"], progress["done"]) == (12, 0, True)
    finally:
        redis.stop()
