"""The audio-visual datasets in the training library's catalogue: `ravdess` and
`enterface05`, listed when their folder exists (DATA_DIR/ravdess, DATA_DIR/enterface05, or
the folders `VideoOptions` names), trained on once preprocessed. numpy and the standard
library only, so the API can list them; decoding happens in preprocess.py's workers.

Each dataset has two modalities, `audio` (log-Mel spectrograms, (1, 64, 51) float16) and
`visual` (central frames, (3, 112, 112) uint8), one sample per segment, 30 per video; group =
video, subject = actor (RAVDESS) or subject (eNTERFACE'05).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..two_view import DatasetError, DatasetInfo, TwoViewData
from .config import PreprocessConfig
from .discovery import CLASSES, DISCOVER, Discovery, DiscoveryError
from .preprocess import (PreprocessReport, Progress, cache_dir, clip_name, clips_fingerprint, finished_clips,
                         preprocess, read_report)

TITLES = {
    "ravdess": ("RAVDESS (audio-visual speech)", "Actors speaking with the six emotions of the paper (§3.1)"),
    "enterface05": ("eNTERFACE'05", "Subjects eliciting six emotions, five sentences each (paper §3.1)"),
}
SOURCE = "video"


class NotPreprocessedError(DatasetError):
    pass


@dataclass(frozen=True)
class VideoOptions:
    """Where the raw datasets are and how they are preprocessed. `roots` overrides
    DATA_DIR/<name> per dataset; the cache is always under DATA_DIR/preprocessed."""

    roots: Mapping[str, Path] = field(default_factory=dict)
    config: PreprocessConfig = PreprocessConfig()
    workers: int | None = None  # None: every core

    @classmethod
    def from_env(cls) -> "VideoOptions":
        """The same environment variables as the dashboard's settings (README, Settings)."""
        roots = {name: Path(os.environ[var]) for name, var in (("ravdess", "RAVDESS_DIR"),
                                                               ("enterface05", "ENTERFACE05_DIR"))
                 if os.environ.get(var)}
        config = PreprocessConfig(frame_size=int(os.environ.get("VIDEO_FRAME_SIZE", 112)),
                                  n_mels=int(os.environ.get("VIDEO_N_MELS", 64)))
        workers = int(os.environ["PREPROCESS_WORKERS"]) if os.environ.get("PREPROCESS_WORKERS") else None
        return cls(roots=roots, config=config, workers=workers)

    def root(self, name: str, data_dir: Path | None) -> Path | None:
        if name in self.roots and self.roots[name] is not None:
            return Path(self.roots[name])
        return None if data_dir is None else Path(data_dir) / name

    def cache(self, name: str, data_dir: Path | None) -> Path:
        if data_dir is None:
            raise DatasetError("preprocessing needs a data directory (DATA_DIR) to keep its cache in")
        return cache_dir(Path(data_dir) / "preprocessed", name, self.config)


def present(data_dir: Path | None, options: VideoOptions) -> list[str]:
    """The audio-visual datasets whose folder exists."""
    return [name for name in DISCOVER if (root := options.root(name, data_dir)) is not None and root.is_dir()]


def discover(name: str, data_dir: Path | None, options: VideoOptions) -> Discovery:
    root = options.root(name, data_dir)
    if root is None or not root.is_dir():
        raise DatasetError(f"no folder for {name}: expected {root}")
    try:
        return DISCOVER[name](root)
    except DiscoveryError as error:
        raise DatasetError(str(error)) from None


def status(name: str, data_dir: Path | None, options: VideoOptions) -> tuple[Discovery, PreprocessReport | None]:
    """The clips found, and the preprocessing report when the cache holds exactly these clips."""
    discovery = discover(name, data_dir, options)
    report = read_report(options.cache(name, data_dir)) if data_dir is not None else None
    if report is not None and report.clips_fingerprint != clips_fingerprint([clip_name(c) for c in discovery.clips]):
        report = None
    return discovery, report


def info(name: str, data_dir: Path | None, options: VideoOptions) -> DatasetInfo:
    title, about = TITLES[name]
    try:
        discovery, report = status(name, data_dir, options)
    except DatasetError as error:
        return DatasetInfo.broken(name, SOURCE, str(error))
    config = options.config
    shapes = {"audio": config.audio_shape, "visual": config.visual_shape}
    subjects = len(discovery.subjects)
    if report is not None:
        failed = f"; {len(report.failed)} clip(s) skipped (see {report.cache}/data/report.json)" if report.failed else ""
        description = (f"{about}. {report.n_videos} videos from {subjects} subjects, {config.n_segments} segments "
                       f"each; preprocessed{failed}.")
        return DatasetInfo(name=name, title=title, description=description, source=SOURCE, modalities=("audio", "visual"),
                           classes=CLASSES, n_samples=report.n_segments, n_groups=report.n_videos, shapes=shapes,
                           class_counts=tuple(report.class_counts), has_subjects=True, preprocessed=True)
    done = finished_clips(options.cache(name, data_dir)) if data_dir is not None else 0
    started = f" ({done} done so far)" if done else ""
    description = (f"{about}. {len(discovery.clips)} videos from {subjects} subjects in {discovery.root}; not "
                   f"preprocessed yet{started}: the first run preprocesses it (decodes every clip once).")
    n = len(discovery.clips) * config.n_segments
    return DatasetInfo(name=name, title=title, description=description, source=SOURCE, modalities=("audio", "visual"),
                       classes=CLASSES, n_samples=n, n_groups=len(discovery.clips), shapes=shapes,
                       class_counts=tuple(c * config.n_segments for c in discovery.class_counts), has_subjects=True,
                       preprocessed=False)


def ensure_preprocessed(name: str, data_dir: Path | None, options: VideoOptions, progress: Progress | None = None,
                        progress_bar: bool = False) -> PreprocessReport:
    """Preprocess what is not cached yet (nothing when all is); the report either way."""
    discovery, report = status(name, data_dir, options)
    if report is not None:
        return report
    return preprocess(discovery, Path(data_dir) / "preprocessed", options.config, options.workers, progress,
                      progress_bar)


def segment_index(name: str, data_dir: Path | None, options: VideoOptions) -> dict[str, np.ndarray]:
    """Per segment of the preprocessed dataset: video id, subject, segment start (seconds)."""
    with np.load(options.cache(name, data_dir) / "data" / "index.npz", allow_pickle=False) as index:
        return {"video": index["video"][index["group"]], "subject": index["subject"],
                "segment_start": index["segment_start"]}


def load(name: str, data_dir: Path | None, options: VideoOptions) -> TwoViewData:
    """The preprocessed dataset, memory-mapped (frames and spectrograms are paged in as read)."""
    discovery, report = status(name, data_dir, options)
    if report is None:
        raise NotPreprocessedError(f"{name} is not preprocessed yet ({len(discovery.clips)} clips)")
    data = options.cache(name, data_dir) / "data"
    with np.load(data / "index.npz", allow_pickle=False) as index:
        labels, groups, subjects = index["label"], index["group"], index["subject"]
    title, about = TITLES[name]
    return TwoViewData(
        name=name, title=title, description=about,
        views={"audio": np.load(data / "audio.npy", mmap_mode="r"), "visual": np.load(data / "visual.npy", mmap_mode="r")},
        labels=labels, classes=CLASSES, groups=groups,
        subjects=np.unique(subjects, return_inverse=True)[1].astype(np.int64), source=SOURCE,
    )
