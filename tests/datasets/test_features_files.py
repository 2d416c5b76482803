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


def test_a_registered_feature_set_is_deleted_with_its_files(embedded_settings, client_for):
    """DELETE /api/datasets/{name}: the shared catalogue's entry, its file in the artifact store
    and this host's copy go; a host's own different file of that name stays; what is not
    registered (a built-in) is a 404."""
    from backend.catalog import registry
    from backend.db import session_factory
    from backend.storage import store_for

    features, store = embedded_settings.data_dir / "features", store_for(embedded_settings)
    write(features, "made", **good())
    with session_factory(embedded_settings.database_url)() as session:  # what the extraction job does
        registry.register_features(session, store, features / "made.npz")
    client = client_for(embedded_settings)
    assert {d["name"]: d["shared"] for d in client.get("/api/datasets").json()}["made"] is True
    assert store.exists(registry.features_key("made"))
    assert client.delete("/api/datasets/made").status_code == 204
    assert not store.exists(registry.features_key("made")) and not (features / "made.npz").exists()
    assert "made" not in {d["name"] for d in client.get("/api/datasets").json()}
    assert client.delete("/api/datasets/made").status_code == 404
    assert client.delete("/api/datasets/digits").status_code == 404
    write(features, "made", **good())
    with session_factory(embedded_settings.database_url)() as session:
        registry.register_features(session, store, features / "made.npz")
    write(features, "made", **video_features())  # this host's own file now, not the registered one
    assert client.delete("/api/datasets/made").status_code == 204
    assert (features / "made.npz").exists() and not store.exists(registry.features_key("made"))


# --- read defensively: the outside probe's files ------------------------------------------


@pytest.fixture
def default_limits():
    """The limits of the process's cache are restored for the tests that follow."""
    from training.datasets import FeatureLimits, configure_features

    yield
    configure_features(FeatureLimits.from_env())


def npy_header_only(shape, dtype="<f4") -> bytes:
    """An .npy stream whose header declares `shape` and which holds no data at all."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_huge_declaration(directory, name):
    """The probe's 9 KB file: an array whose header declares 10^8 × 10^6 float32."""
    import zipfile

    directory.mkdir(parents=True, exist_ok=True)
    arrays = good()
    with zipfile.ZipFile(directory / f"{name}.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for key in ("label", "audio", "group"):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, arrays[key])
        archive.writestr("visual.npy", npy_header_only((10**8, 10**6)))


def test_a_file_declaring_a_huge_array_is_refused_before_anything_is_allocated(data_dir):
    write_huge_declaration(data_dir / "features", "huge")
    write(data_dir / "features", "fine", **good())
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert "declares shape (100000000, 1000000)" in infos["huge"].error
    assert infos["fine"].error is None and infos["digits"].error is None
    with pytest.raises(DatasetError, match="declares shape"):
        load_dataset("huge", data_dir)


def test_a_file_too_big_for_the_limit_is_refused_from_its_headers(data_dir, default_limits):
    from training.datasets import FeatureLimits, configure_features

    write(data_dir / "features", "big", **video_features(n_videos=600))  # 2,400 × (6 + 8) float32
    write(data_dir / "features", "small", **good())
    configure_features(FeatureLimits(max_bytes=100_000))
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert "at most 100,000 (setting FEATURES_MAX_BYTES)" in infos["big"].error
    assert infos["small"].error is None


def test_any_error_reading_a_file_marks_only_that_file(data_dir):
    """Corrupt compressed data raises zlib.error or a CRC error from deep inside zipfile,
    neither of which the reader names: the file is unusable, with the reason, and nothing else is."""
    features = data_dir / "features"
    features.mkdir(parents=True)
    np.savez_compressed(features / "corrupt.npz", **good())
    raw = bytearray((features / "corrupt.npz").read_bytes())
    start = raw.index(b"audio.npy") + 200
    raw[start:start + 64] = bytes(64)
    (features / "corrupt.npz").write_bytes(bytes(raw))
    write(features, "fine", **good())
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert infos["corrupt"].error and infos["fine"].error is None and infos["digits"].error is None
    with pytest.raises(DatasetError):
        load_dataset("corrupt", data_dir)


def test_the_cache_is_bounded_by_bytes_and_forgets_changed_and_deleted_files(tmp_path):
    from training.datasets.features import FeatureFileCache, FeatureLimits

    features = tmp_path / "features"
    for name in ("a", "b", "c"):
        write(features, name, **video_features(n_videos=120))  # 480 × 14 float32 and three int64 arrays
    one = 480 * 14 * 4 + 3 * 480 * 8
    cache = FeatureFileCache(FeatureLimits(cache_bytes=2 * one + 100))  # room for two of the three
    sizes = []
    for name in ("a", "b", "c", "a"):
        data = cache.get(features / f"{name}.npz")
        sizes.append(cache.cached_bytes)
        assert data.info().n_samples == 480
    assert sizes == [one, 2 * one, 2 * one, 2 * one]  # the third pushed out the first, which came back
    assert cache.info(features / "b.npz").n_samples == 480  # listed even when its arrays are out
    (features / "a.npz").unlink()
    cache.forget_missing(features, {features / "b.npz", features / "c.npz"})
    assert cache.cached_bytes < max(sizes)
    assert "cannot be read" in cache.info(features / "a.npz").error
    write(features, "c", **video_features(n_videos=30))
    assert cache.get(features / "c.npz").info().n_samples == 120  # changed: read again


def test_deleting_a_file_frees_its_cached_arrays(data_dir):
    from training import datasets

    write(data_dir / "features", "gone_soon", **video_features(n_videos=120))
    before = datasets._feature_cache.cached_bytes
    assert load_dataset("gone_soon", data_dir).info().n_samples == 480
    assert datasets._feature_cache.cached_bytes > before
    (data_dir / "features" / "gone_soon.npz").unlink()
    assert "gone_soon" not in {info.name for info in dataset_infos(data_dir)}
    assert datasets._feature_cache.cached_bytes == before


def test_the_number_of_classes_is_capped(data_dir):
    arrays = good()
    arrays["label"] = arrays["label"].copy()
    arrays["label"][0] = 10**6
    arrays.pop("classes")
    write(data_dir / "features", "many_classes", **arrays)
    named = good()
    named["classes"] = np.array([f"c{k}" for k in range(5000)])
    write(data_dir / "features", "many_names", **named)
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert "at most 1,000 classes (setting MAX_CLASSES)" in infos["many_classes"].error
    assert "'classes' names 5,000 classes; at most 1,000" in infos["many_names"].error
    assert infos["many_classes"].classes == () and infos["many_classes"].class_counts == ()


def test_values_overflowing_float32_and_featureless_modalities_are_refused(data_dir):
    overflowing = good()
    overflowing["audio"] = overflowing["audio"].astype(np.float64)
    overflowing["audio"][7, 2] = 1e300  # finite in float64, infinite in float32
    write(data_dir / "features", "overflowing", **overflowing)
    featureless = good()
    featureless["visual"] = np.zeros((48, 0), dtype=np.float32)
    write(data_dir / "features", "featureless", **featureless)
    infos = {info.name: info for info in dataset_infos(data_dir)}
    assert "NaN or infinite values (first in row 7) as float32" in infos["overflowing"].error
    assert "modality 'visual' has no features: shape (48, 0)" in infos["featureless"].error


def test_the_api_keeps_serving_other_datasets_beside_the_probes_files(embedded_settings, start_server, default_limits):
    import httpx2 as httpx

    features = embedded_settings.data_dir / "features"
    write_huge_declaration(features, "huge")
    arrays = good()
    arrays["label"] = arrays["label"].copy()
    arrays["label"][0] = 6
    arrays.pop("classes")
    write(features, "seven_classes", **arrays)
    base = start_server(embedded_settings.model_copy(update={"max_classes": 5}))
    with httpx.Client(base_url=base, timeout=30) as http:
        listed = http.get("/api/datasets")
        assert listed.status_code == 200
        errors = {d["name"]: d["error"] for d in listed.json()}
        assert "declares shape" in errors["huge"] and errors["digits"] is None
        assert "at most 5 classes (setting MAX_CLASSES)" in errors["seven_classes"]  # the server's own setting
        spec = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}
        assert http.post("/api/runs", json=spec).status_code == 201
        assert http.post("/api/sweeps/preview", json={**spec, "seed": [0, 1]}).status_code == 200
        refused = http.post("/api/runs", json={**spec, "dataset": "huge", "missing_modality": "audio"})
        assert refused.status_code == 422 and "declares shape" in refused.json()["detail"][0]["msg"]
