"""From an unpacked RAVDESS folder to video-level results through the API and a real worker
process: the run preprocesses the dataset as its first stage, trains the small CNN, and
reports accuracy and a confusion matrix per video. Dataset jobs (preprocess, extract
features) go the same way."""

from __future__ import annotations

import shutil

import pytest

from tests.support import wait_for
from tests.runs.test_end_to_end import wait_for_state
from tests.support.videos import enterface_tree, ravdess_tree


@pytest.fixture
def video_settings(embedded_settings, monkeypatch):
    embedded_settings.video_frame_size = 32
    embedded_settings.preprocess_workers = 2
    # Inherited by the worker process: one torch thread for these tiny convolutions (see
    # test_audiovisual.one_torch_thread).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return embedded_settings


def wait_for_job(client, job_id: int, timeout: float = 180) -> dict:
    def done():
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, interval=0.2, what=f"job {job_id}")


def test_a_run_on_a_raw_ravdess_folder_preprocesses_then_scores_videos(video_settings, client_for, start_worker,
                                                                        tmp_path_factory):
    source = tmp_path_factory.mktemp("raw")
    ravdess_tree(source / "ravdess", actors=range(1, 7))
    shutil.copytree(source / "ravdess", video_settings.ravdess_dir)
    client = client_for(video_settings)
    listed = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert listed["ravdess"]["source"] == "video" and listed["ravdess"]["preprocessed"] is False
    assert listed["ravdess"]["modalities"] == ["audio", "visual"] and listed["ravdess"]["n_groups"] == 36

    refused = client.post("/api/runs", json={"dataset": "ravdess", "method": "mle", "missing_modality": "visual",
                                             "missing_rate": 0.5})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "encoder"]

    start_worker(video_settings)
    spec = {"dataset": "ravdess", "method": "mle", "fusion": "add", "missing_modality": "visual", "missing_rate": 0.5,
            "epochs": 2, "seed": 0, "encoder": "small_cnn", "batch_size": 32, "lr": 0.003}
    run = client.post("/api/runs", json=spec).json()
    seen_stages = set()

    def finished():
        current = client.get(f"/api/runs/{run['id']}").json()
        if current["info"] and "stage" in current["info"]:
            seen_stages.add((current["info"]["stage"], current["info"]["stage_total"]))
        return current if current["state"] in ("succeeded", "failed", "cancelled") else None

    final = wait_for(finished, 240, interval=0.05, what="the video run")
    assert final["state"] == "succeeded", final["error_detail"]
    info = final["info"]
    assert info["preprocessing"]["decoded_now"] == 36 and info["preprocessing"]["videos"] == 36
    # Decoding 36 clips takes seconds, watched every 50 ms: the stage must have been seen, and only it.
    assert seen_stages == {("preprocessing", 36)}
    assert info["accuracy_level"] == "group" and info["n_test_groups"] == 6 and info["n_test"] == 180
    assert final["test_accuracy"] >= 4 / 6  # one colour and one tone per class; chance is 1/6
    confusion = client.get(f"/api/runs/{run['id']}/confusion").json()
    assert confusion["classes"] == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert sum(map(sum, confusion["counts"])) == 6  # one vote per test video
    assert confusion["counted"] == "groups"
    names = {p["name"] for p in client.get(f"/api/runs/{run['id']}/metrics").json()["points"]}
    assert {"test_accuracy", "test_sample_accuracy", "val_accuracy"} <= names
    assert {d["name"]: d for d in client.get("/api/datasets").json()}["ravdess"]["preprocessed"] is True

    # a frozen backbone turns it into a features dataset, which trains like any other
    job = client.post("/api/datasets/ravdess/features", json={"backbone": "resnet34", "batch_size": 128})
    assert job.status_code == 202
    done = wait_for_job(client, job.json()["id"])
    assert done["state"] == "succeeded", done["error_detail"]
    assert done["result"]["features_dataset"] == "ravdess-resnet34-random" and done["done"] == done["total"] == 2160
    features = {d["name"]: d for d in client.get("/api/datasets").json()}["ravdess-resnet34-random"]
    assert features["error"] is None and features["shapes"] == {"audio": [512], "visual": [512]}
    run = client.post("/api/runs", json={"dataset": "ravdess-resnet34-random", "method": "ae2", "missing_modality":
                                         "audio", "missing_rate": 0.5, "epochs": 2, "imputer_epochs": 2}).json()
    assert wait_for_state(client, run["id"], {"succeeded", "failed"})["state"] == "succeeded"


def test_a_preprocessing_job_from_the_api(video_settings, client_for, start_worker, tmp_path_factory):
    enterface_tree(video_settings.enterface05_dir, subjects=(1, 2))
    client = client_for(video_settings)
    assert client.post("/api/datasets/digits/preprocess").status_code == 409
    assert client.post("/api/datasets/imagenet/preprocess").status_code == 404
    first = client.post("/api/datasets/enterface05/preprocess")
    assert first.status_code == 202 and first.json()["state"] == "queued"
    again = client.post("/api/datasets/enterface05/preprocess")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]  # joins the queued job
    start_worker(video_settings)
    job = wait_for_job(client, first.json()["id"])
    assert job["state"] == "succeeded", job["error_detail"]
    assert job["done"] == job["total"] == 12 and job["result"]["videos"] == 12 and job["result"]["failed_clips"] == []
    listed = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert listed["enterface05"]["preprocessed"] is True and listed["enterface05"]["n_samples"] == 360
    assert [j["id"] for j in client.get("/api/jobs?dataset=enterface05").json()] == [job["id"]]
