"""Preprocessing a whole dataset (paper §3.2) into a cache under DATA_DIR, resumably.

    DATA_DIR/preprocessed/<dataset>-<settings key>/
        config.json          the settings (PreprocessConfig) and where the clips were found
        clips/<clip>.npz     one finished clip: visual (30, 3, H, W) uint8, audio (30, 1, 64, 51) float16
        failed/<clip>.json   one clip that cannot be used, with the reason
        data/                all clips together, read with memory mapping:
            visual.npy, audio.npy   (segments, …) in clip order
            index.npz               label, group (video number), subject, segment start, video ids, classes
            report.json             counts, the failed clips and their reasons, timings

A clip's file name carries a hash of its path, size and modification time: a finished clip
is never decoded again, and a clip whose file changed is. Every file is written to a
temporary name and renamed, so an interrupted run (Ctrl-C, a killed worker, a cancelled run)
leaves only whole files, and the next run goes on from there. Clips are decoded in parallel
processes (all cores by default); one lock per cache folder makes a second preprocessing of
the same data wait for the first and then find everything done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .config import PreprocessConfig
from .discovery import CLASSES, DISCOVER, Clip, Discovery

# progress(done, total, failed) → False to stop (a cancelled run); done counts failed clips too.
Progress = Callable[[int, int, int], bool]


class PreprocessingStopped(Exception):
    """Stopped on request; the finished clips are kept and the next run resumes."""


class PreprocessingFailed(RuntimeError):
    pass


@dataclass
class PreprocessReport:
    dataset: str
    root: str
    cache: str
    config: dict
    n_clips: int  # found by discovery
    n_videos: int  # usable ones, in the dataset
    n_segments: int
    class_counts: list[int]  # segments per class
    failed: list[dict]  # {"video", "reason"}
    decoded_now: int  # clips decoded by this call (0 when everything was cached)
    seconds: float
    clips_fingerprint: str

    def summary(self) -> dict:
        return {"cache": self.cache, "videos": self.n_videos, "segments": self.n_segments,
                "failed": len(self.failed), "decoded_now": self.decoded_now, "seconds": round(self.seconds, 2)}


def cache_dir(cache_root: Path, dataset: str, config: PreprocessConfig) -> Path:
    return Path(cache_root) / f"{dataset}-{config.key()}"


def clip_name(clip: Clip) -> str:
    """File-system-safe, unique, and changed whenever the source file changes."""
    stat = clip.path.stat()
    digest = hashlib.sha1(f"{clip.video}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", clip.video)[-80:]
    return f"{readable}-{digest}"


def clips_fingerprint(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _write_json(path: Path, value) -> None:
    with atomic_write(path) as file:
        file.write(json.dumps(value, indent=2).encode())


def _save_npz(path: Path, **arrays) -> None:
    with atomic_write(path) as file:
        np.savez(file, **arrays)


def process_clip(path: str, name: str, directory: str, config: PreprocessConfig) -> tuple[str, str | None]:
    """Decode one clip into `directory/clips/<name>.npz`, or record why it cannot be used in
    `directory/failed/<name>.json`. Runs in a worker process; returns (name, reason or None)."""
    from .decode import ClipError, read_clip

    try:
        clip = read_clip(Path(path), config)
    except ClipError as error:
        reason = str(error)
    except MemoryError:  # this machine's trouble, not the clip's: never recorded as a bad clip
        raise
    except Exception as error:  # a decoder surprise on one clip must not stop the others
        reason = f"failed: {type(error).__name__}: {error}"
    else:
        _save_npz(Path(directory) / "clips" / f"{name}.npz", visual=clip.visual, audio=clip.audio,
                  starts=clip.starts, duration=np.float32(clip.duration))
        return name, None
    _write_json(Path(directory) / "failed" / f"{name}.json", {"path": path, "reason": reason})
    return name, reason


def _quiet_worker() -> None:
    # One process per core: keep each one's numeric libraries single-threaded.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


@contextmanager
def _exclusive(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _may_start_processes():
    """Let a Celery worker's task start the decoding processes. Celery's prefork pool runs tasks
    in daemonic billiard processes: multiprocessing forbids those to start children (they would
    be orphaned when killed), and billiard's authentication key refuses to be pickled for a
    spawned child. Ours are joined before preprocess() returns, and a decoding process whose
    parent dies exits as its task pipe closes, so for the time the pool starts its processes
    the flag is lifted and the key is handed over as multiprocessing's own type."""
    import multiprocessing
    from multiprocessing.process import AuthenticationString

    config = multiprocessing.current_process()._config
    saved = {key: config[key] for key in ("daemon", "authkey") if key in config}
    config["daemon"] = False
    if "authkey" in saved and type(saved["authkey"]) is not AuthenticationString:
        config["authkey"] = AuthenticationString(bytes(saved["authkey"]))
    try:
        yield
    finally:
        config.update(saved)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _decode_all(todo: list[tuple[Clip, str]], directory: Path, config: PreprocessConfig, workers: int,
                on_clip: Callable[[str, str | None], bool]) -> None:
    """Decode `todo`; on_clip(name, reason) after each, returning False to stop."""
    if workers <= 1 or len(todo) <= 1:
        for clip, name in todo:
            if not on_clip(*process_clip(str(clip.path), name, str(directory), config)):
                raise PreprocessingStopped()
        return
    import multiprocessing

    # spawn, not fork: the caller may hold threads (a run's heartbeat) or CUDA state.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_quiet_worker) as pool:
        with _may_start_processes():  # the executor starts its processes on submit
            pending = {pool.submit(process_clip, str(clip.path), name, str(directory), config)
                       for clip, name in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if not on_clip(*future.result()):
                        raise PreprocessingStopped()
        except BrokenProcessPool:
            raise PreprocessingFailed("a decoding process died (out of memory, or a crash in FFmpeg); finished clips "
                                      "are kept: run the preprocessing again to resume") from None
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def preprocess(discovery: Discovery, cache_root: Path, config: PreprocessConfig = PreprocessConfig(),
               workers: int | None = None, progress: Progress | None = None,
               progress_bar: bool = True) -> PreprocessReport:
    """Preprocess every clip found, reusing finished ones, then gather them into data/.
    Raises PreprocessingStopped when `progress` asks to stop."""
    from tqdm import tqdm

    started = time.perf_counter()
    directory = cache_dir(cache_root, discovery.dataset, config)
    with _exclusive(directory):
        _write_json(directory / "config.json", {"dataset": discovery.dataset, "root": str(discovery.root),
                                                "config": config.describe()})
        names = [clip_name(clip) for clip in discovery.clips]
        finished = {p.stem for p in (directory / "clips").glob("*.npz")}
        failed = {p.stem for p in (directory / "failed").glob("*.json")}
        known = finished | failed
        todo = [(clip, name) for clip, name in zip(discovery.clips, names) if name not in known]
        total = len(names)
        counts = {"done": total - len(todo), "failed": sum(name in failed for name in names)}
        bar = tqdm(total=total, initial=counts["done"], unit="clip", desc=f"preprocessing {discovery.dataset}",
                   disable=not progress_bar, file=sys.stderr, dynamic_ncols=True)

        def on_clip(name: str, reason: str | None) -> bool:
            counts["done"] += 1
            counts["failed"] += reason is not None
            if reason is not None:
                bar.write(f"skipped {name}: {reason}", file=sys.stderr)
            bar.update(1)
            return progress is None or progress(counts["done"], total, counts["failed"]) is not False

        if progress is not None and progress(counts["done"], total, counts["failed"]) is False:
            raise PreprocessingStopped()
        try:
            _decode_all(todo, directory, config, workers or default_workers(), on_clip)
        finally:
            bar.close()
        report = _gather(discovery, names, directory, config, decoded_now=len(todo),
                         seconds=time.perf_counter() - started)
    return report


def _gather(discovery: Discovery, names: list[str], directory: Path, config: PreprocessConfig, decoded_now: int,
            seconds: float) -> PreprocessReport:
    """Write data/ from the clip files (unless it already holds exactly these clips)."""
    fingerprint = clips_fingerprint(names)
    existing = read_report(directory)
    if existing is not None and existing.clips_fingerprint == fingerprint:
        existing.decoded_now, existing.seconds = decoded_now, seconds
        return existing
    usable, failures = [], []
    for clip, name in zip(discovery.clips, names):
        failure = directory / "failed" / f"{name}.json"
        if failure.exists():
            failures.append({"video": clip.video, "reason": json.loads(failure.read_text())["reason"]})
        else:
            usable.append((clip, name))
    if not usable:
        raise PreprocessingFailed(f"none of the {len(names)} clips could be used; first reason: "
                                  f"{failures[0]['reason'] if failures else 'none'}")
    segments = config.n_segments
    n = len(usable) * segments
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".data."))
    try:
        visual = np.lib.format.open_memmap(staging / "visual.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, *config.visual_shape))
        audio = np.lib.format.open_memmap(staging / "audio.npy", mode="w+", dtype=np.float16,
                                          shape=(n, *config.audio_shape))
        starts = np.zeros(n, np.float32)
        for video, (clip, name) in enumerate(usable):
            with np.load(directory / "clips" / f"{name}.npz") as arrays:
                rows = slice(video * segments, (video + 1) * segments)
                visual[rows], audio[rows], starts[rows] = arrays["visual"], arrays["audio"], arrays["starts"]
        visual.flush()
        audio.flush()
        del visual, audio
        labels = np.repeat([clip.label for clip, _ in usable], segments).astype(np.int64)
        np.savez(staging / "index.npz", label=labels, group=np.repeat(np.arange(len(usable)), segments),
                 subject=np.repeat([clip.subject for clip, _ in usable], segments), segment_start=starts,
                 video=np.array([clip.video for clip, _ in usable]), classes=np.array(CLASSES))
        report = PreprocessReport(
            dataset=discovery.dataset, root=str(discovery.root), cache=str(directory), config=config.describe(),
            n_clips=len(names), n_videos=len(usable), n_segments=n,
            class_counts=np.bincount(labels, minlength=len(CLASSES)).tolist(), failed=failures,
            decoded_now=decoded_now, seconds=seconds, clips_fingerprint=fingerprint)
        (staging / "report.json").write_text(json.dumps(asdict(report), indent=2))
        for path in staging.iterdir():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        target = directory / "data"
        if target.exists():  # stale: other clips; swap it out, then remove it
            old = Path(tempfile.mkdtemp(dir=directory, prefix=".old."))
            os.replace(target, old / "data")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(directory, set(names))
    return report


def _prune(directory: Path, current: set[str]) -> None:
    """Drop clip files of sources that changed or went away (they can never be used again)."""
    for sub, suffix in (("clips", ".npz"), ("failed", ".json")):
        for path in (directory / sub).glob(f"*{suffix}"):
            if path.stem not in current:
                path.unlink(missing_ok=True)


def read_report(directory: Path) -> PreprocessReport | None:
    path = Path(directory) / "data" / "report.json"
    if not path.exists():
        return None
    try:
        return PreprocessReport(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def finished_clips(directory: Path) -> int:
    """Clips already decoded or recorded as failed (for "412 of 1152 done")."""
    return sum(1 for _ in (Path(directory) / "clips").glob("*.npz")) + sum(
        1 for _ in (Path(directory) / "failed").glob("*.json"))
