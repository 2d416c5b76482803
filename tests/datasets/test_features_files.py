"""Bring-your-own features: every DATA_DIR/features/<name>.npz is a dataset; malformed files
are reported with their reason and never break the other datasets."""

from __future__ import annotations

import numpy as np
import pytest

from training.datasets import DatasetError, dataset_info, dataset_infos, load_dataset
from training.spec import TrainSpec
from training.train import SpecError, train


def write(directory, name, **arrays):
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f"{name}.npz", **arrays)


def video_features(n_videos=60, segments=4, n_classes=3, seed=0):
    """Segments of videos whose two views carry class information, grouped by video."""
    rng = np.random.default_rng(seed)
    video_label = np.arange(n_videos) % n_classes
    labels = np.repeat(video_label, segments)
    centres_a = rng.normal(size=(n_classes, 6)) * 2
    centres_v = rng.normal(size=(n_classes, 2, 4)) * 2
    audio = centres_a[labels] + rng.normal(size=(len(labels), 6))
    visual = centres_v[labels] + rng.normal(size=(len(labels), 2, 4))
    return dict(label=labels, audio=audio.astype(np.float32), visual=visual.astype(np.float32),
                group=np.repeat(np.arange(n_videos), segments), subject=np.repeat(np.arange(n_videos) % 10, segments),
                classes=np.array(["calm", "happy", "sad"]))


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def test_a_valid_file_is_a_dataset_that_trains_at_group_level(data_dir):
    write(data_dir / "features", "my_av", **video_features())
    info = dataset_info("my_av", data_dir)
    assert info.error is None and info.source == "features"
    assert info.modalities == ("audio", "visual") and info.classes == ("calm", "happy", "sad")
    assert info.n_samples == 240 and info.n_groups == 60 and info.shapes == {"audio": (6,), "visual": (2, 4)}
    assert info.has_subjects
    result = train(TrainSpec(dataset="my_av", method="mle", missing_modality="visual", missing_rate=0.5, epochs=3),
                   data_dir=data_dir)
    assert result.info["n_test_groups"] * 4 == result.info["n_test"]
    assert sum(map(sum, result.confusion_matrix)) == result.info["n_test_groups"]  # one vote per video
    assert result.test_accuracy > 0.6


def test_subject_split_uses_the_subject_array(data_dir):
    write(data_dir / "features", "my_av", **video_features())
    result = train(TrainSpec(dataset="my_av", method="lower_bound", missing_modality="audio", missing_rate=0.5,
                             epochs=1, split_by="subject"), data_dir=data_dir)
    assert result.info["split_by"] == "subject"
    no_subjects = {k: v for k, v in video_features().items() if k != "subject"}
    write(data_dir / "features", "plain", **no_subjects)
    with pytest.raises(SpecError, match="no subjects"):
        train(TrainSpec(dataset="plain", method="mle", missing_modality="audio", missing_rate=0.5, split_by="subject"),
              data_dir=data_dir)


def good():
    return video_features(n_videos=12)


MALFORMED = [
    ("no label", lambda a: a.pop("label"), "missing array 'label'"),
    ("one class", lambda a: a.update(label=np.zeros_like(a["label"])), "only one class"),
    ("float labels", lambda a: a.update(label=a["label"] + 0.5), "must hold integers"),
    ("negative label", lambda a: a["label"].__setitem__(0, -1), "negative value"),
    ("rows differ", lambda a: a.update(audio=a["audio"][:-1]), "has 47 rows but 'label' has 48"),
    ("NaN", lambda a: a["visual"].__setitem__((5, 1, 2), np.nan), "NaN or infinite values (first in row 5)"),
    ("three modalities", lambda a: a.update(depth=a["audio"]), "exactly two modality arrays"),
    ("one modality", lambda a: a.pop("visual"), "exactly two modality arrays"),
    ("text modality", lambda a: a.update(audio=np.array(["x"] * 48)), "must be numeric"),
    ("vector modality", lambda a: a.update(audio=a["audio"][:, 0]), "at least one feature"),
    ("short classes", lambda a: a.update(classes=np.array(["a", "b"])), "names only 2 classes"),
    ("mixed group", lambda a: a.update(group=np.zeros(48, dtype=int)), "more than one label"),
    ("group length", lambda a: a.update(group=np.arange(10)), "'group' must have shape (48,)"),
]


@pytest.mark.parametrize("case,break_it,message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_is_reported_and_others_still_work(data_dir, case, break_it, message):
    arrays = good()
    break_it(arrays)
    write(data_dir / "features", "broken", **arrays)
    write(data_dir / "features", "fine", **good())
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert message in infos["broken"].error, infos["broken"].error
    assert infos["fine"].error is None and infos["digits"].error is None
    with pytest.raises(DatasetError, match="."):
        load_dataset("broken", data_dir)
    with pytest.raises(SpecError, match="cannot be used"):
        train(TrainSpec(dataset="broken", method="mle", missing_modality="audio", missing_rate=0.5), data_dir=data_dir)


def test_unreadable_file_and_pickled_arrays_are_refused(data_dir):
    features = data_dir / "features"
    features.mkdir(parents=True)
    (features / "garbage.npz").write_bytes(b"this is not a zip file")
    arrays = good()
    arrays["classes"] = np.array([{"a": 1}, "b", "c"], dtype=object)  # needs pickle to load
    write(features, "pickled", **arrays)
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert "not a readable .npz file" in infos["garbage"].error
    assert infos["pickled"].error and "pickle" in infos["pickled"].error.lower()


def test_a_file_named_like_a_builtin_does_not_replace_it(data_dir):
    write(data_dir / "features", "digits", **good())
    infos = [info for info in dataset_infos(data_dir) if info.name == "digits"]
    assert len(infos) == 2 and infos[0].error is None and "built-in" in infos[1].error
    assert dataset_info("digits", data_dir).modalities == ("top", "bottom")


def test_a_changed_file_is_read_again(data_dir):
    write(data_dir / "features", "evolving", **good())
    assert dataset_info("evolving", data_dir).n_samples == 48
    write(data_dir / "features", "evolving", **video_features(n_videos=30))
    assert dataset_info("evolving", data_dir).n_samples == 120


def test_api_lists_features_and_refuses_runs_on_broken_ones(embedded_settings, client_for):
    features = embedded_settings.data_dir / "features"
    write(features, "mine", **good())
    arrays = good()
    arrays.pop("label")
    write(features, "bad", **arrays)
    client = client_for(embedded_settings)
    listed = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert listed["mine"]["error"] is None and listed["mine"]["modalities"] == ["audio", "visual"]
    assert "missing array 'label'" in listed["bad"]["error"]
    spec = {"dataset": "bad", "method": "mle", "missing_modality": "audio", "missing_rate": 0.5}
    response = client.post("/api/runs", json=spec)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "dataset"] and "missing array 'label'" in error["msg"]
    assert client.post("/api/runs", json={**spec, "dataset": "mine"}).status_code == 201
