"""Datasets behind one interface: the built-in ones and every features file in
`DATA_DIR/features/`. numpy only, so the API can list them without importing torch.

    dataset_infos(data_dir)       every dataset, broken ones with their `error`
    dataset_info(name, data_dir)  one, or UnknownDatasetError
    load_dataset(name, data_dir)  the arrays, or UnknownDatasetError / DatasetError
"""

from __future__ import annotations

import functools
from pathlib import Path

from .base import DatasetError, DatasetInfo, TwoViewData, UnknownDatasetError
from .builtin import BUILTIN_LOADERS
from .features import FeatureFileCache, feature_files

__all__ = ["DatasetError", "DatasetInfo", "TwoViewData", "UnknownDatasetError", "dataset_info", "dataset_infos",
           "load_dataset", "features_dir"]

_feature_cache = FeatureFileCache()


@functools.cache
def _builtin(name: str) -> TwoViewData:
    return BUILTIN_LOADERS[name]()


def features_dir(data_dir: Path | None) -> Path | None:
    return None if data_dir is None else Path(data_dir) / "features"


def _feature_files(data_dir: Path | None) -> dict[str, Path]:
    directory = features_dir(data_dir)
    return {} if directory is None else feature_files(directory)


def dataset_infos(data_dir: Path | None = None) -> list[DatasetInfo]:
    infos = [_builtin(name).info() for name in BUILTIN_LOADERS]
    for name, path in _feature_files(data_dir).items():
        if name in BUILTIN_LOADERS:
            infos.append(DatasetInfo.broken(name, "features", f"{path.name} has the name of a built-in dataset; rename it"))
        else:
            infos.append(_feature_cache.info(path))
    return infos


def dataset_info(name: str, data_dir: Path | None = None) -> DatasetInfo:
    for info in dataset_infos(data_dir):
        if info.name == name and not (info.error and name in BUILTIN_LOADERS):
            return info
    raise UnknownDatasetError(name)


def load_dataset(name: str, data_dir: Path | None = None) -> TwoViewData:
    if name in BUILTIN_LOADERS:
        return _builtin(name)
    path = _feature_files(data_dir).get(name)
    if path is None:
        raise UnknownDatasetError(name)
    return _feature_cache.get(path)
