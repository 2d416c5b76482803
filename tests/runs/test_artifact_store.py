"""The artifact store (backend/storage.py) on a local folder and on a real S3-compatible server
process (moto's, over HTTP on loopback): the same calls, the same answers. And a run's
checkpoints in it, keyed by run and attempt (backend/runs/artifacts.py)."""

from __future__ import annotations

import pytest

from backend.runs.artifacts import RunCheckpoints, list_artifacts, remove_run_files, write_confusion
from backend.settings import Settings
from backend.storage import ArtifactStore, InvalidKey, store_for
from training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    settings = Settings(var_dir=tmp_path / "var")
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        settings = server.settings_for(settings, server.new_bucket())
    return store_for(settings)


def test_write_read_list_and_delete(store, tmp_path):
    store.write_bytes("runs/1/checkpoints/attempt-1.pt", b"one")
    store.write_bytes("runs/1/confusion.json", b"{}")
    store.write_bytes("runs/12/other.bin", b"not run 1's")
    assert store.read_bytes("runs/1/confusion.json") == b"{}"
    assert [(f.key, f.size) for f in store.list("runs/1")] == [("checkpoints/attempt-1.pt", 3), ("confusion.json", 2)]
    assert store.list("runs/2") == []
    store.write_bytes("runs/1/confusion.json", b"{\"a\": 1}")  # replaced whole
    assert store.read_bytes("runs/1/confusion.json") == b"{\"a\": 1}" and store.size("runs/1/confusion.json") == 8
    assert b"".join(store.iter_chunks("runs/1/confusion.json", chunk_size=3)) == b"{\"a\": 1}"
    with pytest.raises(FileNotFoundError):
        store.read_bytes("runs/1/missing")
    source = tmp_path / "features.npz"
    source.write_bytes(b"x" * 3_000_000)
    store.put_file(source, "datasets/features/f.npz")
    store.get_file("datasets/features/f.npz", tmp_path / "copy" / "f.npz")
    assert (tmp_path / "copy" / "f.npz").read_bytes() == source.read_bytes()
    store.delete_prefix("runs/1")
    assert store.list("runs/1") == [] and not store.exists("runs/1/confusion.json")
    assert store.exists("runs/12/other.bin")  # a prefix is a folder, not a string prefix
    store.delete_prefix("runs/1")  # nothing there is fine


def test_keys_that_leave_the_store_are_refused(store):
    for key in ["", "../x", "runs/../../x", "/etc/passwd", "a\\b", "a\x00b", ".hidden", "runs/.tmp/x"]:
        with pytest.raises(InvalidKey):
            store.write_bytes(key, b"")


def test_a_checkpoint_is_resumed_from_the_newest_earlier_attempt_only(store):
    first = RunCheckpoints(store, 5, attempt=1)
    assert first.read_bytes() is None  # nothing yet: start over
    save_checkpoint(first, {"fingerprint": "f", "epoch": 3})
    second = RunCheckpoints(store, 5, attempt=2)
    assert load_checkpoint(second, "f")["epoch"] == 3  # another worker (host) resumes from attempt 1's
    assert load_checkpoint(second, "another spec") is None
    save_checkpoint(second, {"fingerprint": "f", "epoch": 4})
    assert first.attempts_stored() == [2]  # attempt 1's is history once attempt 2 has one
    # a worker of attempt 1 taken for dead but still finishing its epoch never overwrites attempt 2's
    save_checkpoint(first, {"fingerprint": "f", "epoch": 99})
    third = RunCheckpoints(store, 5, attempt=3)
    assert load_checkpoint(third, "f")["epoch"] == 4
    # a retry starts over, even though the earlier attempts' files are still there
    assert RunCheckpoints(store, 5, attempt=4, resume_after_attempt=3).read_bytes() is None
    assert {a.path for a in list_artifacts(store, 5)} == {"checkpoints/attempt-1.pt", "checkpoints/attempt-2.pt"}
    write_confusion(store, 5, 4, ["a", "b"], [[1, 0], [0, 1]])
    remove_run_files(store, [5])
    assert list_artifacts(store, 5) == []
