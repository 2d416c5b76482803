"""The one naming rule of features datasets: feature extraction (audiovisual/extract.py) writes
the features of `<dataset>` through a frozen `<backbone>` as the dataset
`<dataset>-<backbone>-imagenet` (ImageNet weights, the paper's Table 2) or
`<dataset>-<backbone>-random`; the presets find them, and read a name back, by the same rule."""

from __future__ import annotations

import re

from ..spec import BACKBONES

# Which weights the backbone had, as the name's last part says.
FEATURE_WEIGHTS = ("imagenet", "random")
_FEATURES_DATASET = re.compile(rf"^(?P<source>.+)-(?P<backbone>{'|'.join(BACKBONES)})"
                               rf"-(?P<weights>{'|'.join(FEATURE_WEIGHTS)})$")


def features_dataset_name(dataset: str, backbone: str, pretrained: bool) -> str:
    """The name feature extraction gives its output."""
    return f"{dataset}-{backbone}-{'imagenet' if pretrained else 'random'}"


def features_dataset_names(dataset: str, backbone: str) -> tuple[str, str]:
    """The features datasets of `dataset` through `backbone`, preferred (ImageNet weights) first."""
    return features_dataset_name(dataset, backbone, True), features_dataset_name(dataset, backbone, False)


def backbone_of(dataset: str | None) -> str | None:
    """The extractor of a features dataset named by this rule, else None."""
    match = _FEATURES_DATASET.match(dataset or "")
    return match["backbone"] if match else None


def source_dataset(dataset: str | None) -> str | None:
    """The video dataset a features dataset was extracted from (itself for any other)."""
    match = _FEATURES_DATASET.match(dataset or "")
    return match["source"] if match else dataset
