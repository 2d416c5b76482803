"""Datasets behind one interface: the built-in ones, every features file in
`DATA_DIR/features/`, and the raw audio-visual datasets (`ravdess`, `enterface05`) whose
folders exist. numpy only, so the API can list them without importing torch.

    dataset_infos(data_dir, video)       every dataset, broken ones with their `error`
    dataset_info(name, data_dir, video)  one, or UnknownDatasetError
    load_dataset(name, data_dir, video)  the arrays, or UnknownDatasetError / DatasetError

`video` (audiovisual.catalog.VideoOptions) says where the raw audio-visual datasets are and
how they are preprocessed; by default DATA_DIR/ravdess and DATA_DIR/enterface05. A raw
dataset must be preprocessed before `load_dataset` (see `prepare_raw_dataset`).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..two_view import DatasetError, DatasetInfo, TwoViewData, UnknownDatasetError
from .builtin import BUILTIN_LOADERS
from .features import FeatureFileCache, FeatureLimits, feature_files

__all__ = ["DatasetError", "DatasetInfo", "FeatureLimits", "TwoViewData", "UnknownDatasetError", "configure_features",
           "dataset_info", "dataset_infos", "load_dataset", "features_dir", "prepare_raw_dataset"]

_feature_cache = FeatureFileCache()


def configure_features(limits: FeatureLimits) -> None:
    """What a features file may hold, from the caller's settings (the API's, the worker's)."""
    _feature_cache.configure(limits)


def feature_cache_size() -> tuple[int, int, int]:
    """What this process holds of parsed features files: (bytes, files, the bound in bytes)."""
    return _feature_cache.cached_bytes, _feature_cache.cached_files, _feature_cache.limits.cache_bytes


@functools.cache
def _builtin(name: str) -> TwoViewData:
    return BUILTIN_LOADERS[name]()


def features_dir(data_dir: Path | None) -> Path | None:
    return None if data_dir is None else Path(data_dir) / "features"


def _feature_files(data_dir: Path | None) -> dict[str, Path]:
    directory = features_dir(data_dir)
    if directory is None:
        return {}
    files = feature_files(directory)
    _feature_cache.forget_missing(directory, set(files.values()))
    return files


def _video_options(video):
    from ..audiovisual.catalog import VideoOptions

    return video if video is not None else VideoOptions()


def _raw_video_names(data_dir: Path | None, video) -> list[str]:
    from ..audiovisual import catalog

    return catalog.present(data_dir, _video_options(video))


def dataset_infos(data_dir: Path | None = None, video=None) -> list[DatasetInfo]:
    from ..audiovisual import catalog

    infos = [_builtin(name).info() for name in BUILTIN_LOADERS]
    raw = _raw_video_names(data_dir, video)
    infos.extend(catalog.info(name, data_dir, _video_options(video)) for name in raw)
    for name, path in _feature_files(data_dir).items():
        if name in BUILTIN_LOADERS or name in catalog.DISCOVER:
            infos.append(DatasetInfo.broken(name, "features", f"{path.name} has the name of a built-in dataset; rename it"))
        else:
            infos.append(_feature_cache.info(path))
    return infos


def dataset_info(name: str, data_dir: Path | None = None, video=None) -> DatasetInfo:
    for info in dataset_infos(data_dir, video):
        if info.name == name and not (info.error and info.source == "features" and name in BUILTIN_LOADERS):
            return info
    raise UnknownDatasetError(name)


def prepare_raw_dataset(name: str, data_dir: Path | None = None, video=None, progress=None,
                        progress_bar: bool = False):
    """Preprocess a raw audio-visual dataset if it is not yet (the report of its cache);
    None for every other dataset, which needs no preparation."""
    if name not in _raw_video_names(data_dir, video):
        return None
    from ..audiovisual import catalog

    return catalog.ensure_preprocessed(name, data_dir, _video_options(video), progress, progress_bar)


def load_dataset(name: str, data_dir: Path | None = None, video=None) -> TwoViewData:
    if name in BUILTIN_LOADERS:
        return _builtin(name)
    if name in _raw_video_names(data_dir, video):
        from ..audiovisual import catalog

        return catalog.load(name, data_dir, _video_options(video))
    path = _feature_files(data_dir).get(name)
    if path is None:
        raise UnknownDatasetError(name)
    return _feature_cache.get(path)
