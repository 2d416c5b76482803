"""Frozen backbones as feature extractors (paper §3.4, Table 2): every segment's frame and
spectrogram through resnet34 / resnet50 / vgg16 (ImageNet weights, or random ones with
pretrained off), written as a features dataset in DATA_DIR/features/<name>.npz — the format
of datasets/features.py — with `group` = video and `subject` = actor, so it trains with every
method (ae1, ae2 and mle in the paper's Table 2) like any bring-your-own features file.

Inputs are standardised as for end-to-end training (encoders.py): ImageNet's statistics for
frames through pretrained weights, otherwise per-channel statistics of the whole dataset (no
labels are used, so nothing of a later test split leaks into a label-dependent choice).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from . import catalog
from .catalog import VideoOptions

# progress(done, total) over segments × modalities → False to stop
ExtractProgress = Callable[[int, int], bool]


class ExtractionStopped(Exception):
    pass


def extract_features(dataset: str, data_dir: Path, backbone: str, pretrained: bool = False,
                     video: VideoOptions | None = None, output_name: str | None = None, batch_size: int = 64,
                     device: str = "auto", progress_bar: bool = True,
                     progress: ExtractProgress | None = None) -> Path:
    """Preprocess the dataset if needed, extract both modalities' features, write the .npz;
    returns its path."""
    import torch
    from tqdm import tqdm

    from ..datasets import load_dataset, prepare_raw_dataset
    from ..datasets.features import NAME_PATTERN
    from ..datasets.naming import features_dataset_name
    from ..encoders import BACKBONES, image_trunk, input_standardiser
    from ..device import pick_device
    from ..prepare import channel_statistics

    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    video = video or VideoOptions()
    name = output_name or features_dataset_name(dataset, backbone, pretrained)
    if not NAME_PATTERN.match(name):
        raise ValueError(f"output name {name!r}: use letters, digits, '_', '.', '-'")
    prepare_raw_dataset(dataset, data_dir, video, progress_bar=progress_bar)
    data = load_dataset(dataset, data_dir, video)
    index = catalog.segment_index(dataset, data_dir, video)
    target = pick_device(device)
    n = len(data.labels)
    total = n * len(data.views)
    bar = tqdm(total=total, unit="segment", desc=f"{backbone} features", disable=not progress_bar, file=sys.stderr)
    features: dict[str, np.ndarray] = {}
    done = 0
    try:
        for modality, values in data.views.items():
            mean, std = channel_statistics(values, np.arange(n))
            standardise = input_standardiser(values.shape[1], mean, std, pretrained)
            trunk, size = image_trunk(backbone, values.shape[1], pretrained)
            model = torch.nn.Sequential(standardise, trunk).to(target).eval()
            out = np.empty((n, size), np.float32)
            with torch.inference_mode():
                for start in range(0, n, batch_size):
                    batch = torch.from_numpy(np.array(values[start : start + batch_size]))  # a copy: the cache is read-only
                    out[start : start + len(batch)] = model(batch).float().cpu().numpy()
                    done += len(batch)
                    bar.update(len(batch))
                    if progress is not None and progress(done, total) is False:
                        raise ExtractionStopped()
            features[modality] = out
            del model
    finally:
        bar.close()
    path = Path(data_dir) / "features" / f"{name}.npz"
    with atomic_write(path) as file:
        np.savez(file, **features, label=data.labels, group=index["video"], subject=index["subject"],
                 classes=np.array(data.classes))
    return path
