"""From a dataset and a spec to tensors: split, missing-modality simulation, standardisation.

x is the modality that is always present in the paper's setting, y the one that may be
missing (`spec.missing_modality`); with `other_missing_rate` some samples lose x instead.
Inputs are standardised with statistics of the training samples that have the modality.
The removed modality is zeroed and flagged, so nothing of it reaches training.

Two forms of inputs, by the spec's encoder; everything else (split, removal, labels, masks,
the record of the split) is one path for both:
- `mlp` (`StandardisedVectors`): every feature standardised here, float32 tensors on the training device (fast for
  feature vectors; the form every method was first written for);
- image encoders (`StoredImages`): inputs kept as stored (uint8 frames, float16 spectrograms) in CPU memory;
  per-channel statistics go to the encoder, which standardises each batch on the device.
  Tensors of a split (inputs, labels, masks) always share one device, so the methods' indexing
  works unchanged; the trainer moves each batch to the training device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from .datasets import TwoViewData
from .likelihood import log_label_prior
from .protocol import digest_of, split_and_missing
from .spec import TrainSpec


@dataclass
class ModalityInput:
    """What an encoder needs to know of its inputs: their shape per sample and, for inputs not
    standardised here (images), per-channel mean and std of the training samples."""

    shape: tuple[int, ...]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


@dataclass
class TrainingSet:
    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    has_x: torch.Tensor  # bool
    has_y: torch.Tensor  # bool

    @property
    def complete(self) -> torch.Tensor:
        return self.has_x & self.has_y

    def with_imputed(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> "TrainingSet":
        """A copy where imputed inputs fill the missing rows, which then count as present."""
        result = replace(self)
        if y is not None:
            result.y = torch.where(self.has_y.view(-1, *[1] * (y.dim() - 1)), self.y, y)
            result.has_y = torch.ones_like(self.has_y)
        if x is not None:
            result.x = torch.where(self.has_x.view(-1, *[1] * (x.dim() - 1)), self.x, x)
            result.has_x = torch.ones_like(self.has_x)
        return result


@dataclass
class EvaluationSet:
    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    groups: np.ndarray

    @cached_property
    def grouped(self) -> bool:
        """Whether groups hold several samples (a video's segments): accuracy is then per group."""
        return len(np.unique(self.groups)) < len(self.z)


@dataclass
class PreparedData:
    train: TrainingSet
    val: EvaluationSet
    test: EvaluationSet
    log_prior: torch.Tensor
    classes: list[str]
    info: dict[str, Any]
    x_input: ModalityInput
    y_input: ModalityInput
    # Mean and std of x and of y (vector inputs; None for images, whose encoders hold theirs): what
    # a model bundle needs to put new inputs in the form the model was trained on.
    standardisation: list[tuple[np.ndarray, np.ndarray]] | None = None


def standardiser(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per input feature over `rows` (the training samples that have it)."""
    mean = values[rows].mean(axis=0)
    std = values[rows].std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


# Rows used to estimate the per-channel statistics of image inputs (evenly spaced, so the same
# for a given split): plenty for a mean and a std, and cheap on a large video dataset.
CHANNEL_STATISTICS_ROWS = 4096


def channel_statistics(values: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of images (n, C, H, W) over `rows` (at most about
    CHANNEL_STATISTICS_ROWS of them, evenly spaced): what an image encoder standardises with.
    Also used by feature extraction (audiovisual/extract.py) over a whole dataset."""
    rows = rows[:: max(1, len(rows) // CHANNEL_STATISTICS_ROWS)]
    sample = np.asarray(values[np.sort(rows)], dtype=np.float32)  # (n, C, H, W)
    mean = sample.mean(axis=(0, 2, 3), dtype=np.float64)
    std = sample.std(axis=(0, 2, 3), dtype=np.float64)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(np.where(std > 1e-6, std, 1.0),
                                                                       dtype=torch.float32)


class StandardisedVectors:
    """`mlp` inputs: every feature standardised here, float32 tensors on the training device."""

    def __init__(self, data: TwoViewData, names: tuple[str, str], present: tuple[np.ndarray, np.ndarray],
                 device: torch.device):
        self.data, self.names, self.device = data, names, device
        self.statistics = [standardiser(data.views[name], rows) for name, rows in zip(names, present)]
        self.modality_inputs = tuple(ModalityInput(tuple(data.views[name].shape[1:])) for name in names)

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(np.ascontiguousarray((self.data.views[name][rows] - mean) / std),
                                     dtype=torch.float32, device=self.device)
                     for name, (mean, std) in zip(self.names, self.statistics))


class StoredImages:
    """Image inputs: kept as stored, in CPU memory; their per-channel statistics go to the encoders."""

    device = torch.device("cpu")

    def __init__(self, data: TwoViewData, names: tuple[str, str], present: tuple[np.ndarray, np.ndarray],
                 device: torch.device):
        self.data, self.names = data, names
        self.modality_inputs = tuple(ModalityInput(tuple(data.views[name].shape[1:]),
                                                   *channel_statistics(data.views[name], rows))
                                     for name, rows in zip(names, present))

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(self._read(self.data.views[name], rows) for name in self.names)

    @staticmethod
    def _read(values: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        # Sorted reads are sequential on a memory-mapped cache; the order is then restored.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
        out[order] = values[rows[order]]
        return torch.from_numpy(out)


def prepare_data(data: TwoViewData, spec: TrainSpec, device: torch.device) -> PreparedData:
    """Split, remove the missing modality, and put the inputs in the encoder's form."""
    y_name = spec.missing_modality
    x_name = next(m for m in data.modalities if m != y_name)
    split, missing = split_and_missing(data, spec)
    has_x, has_y = ~missing.x_missing, ~missing.y_missing
    form = StandardisedVectors if spec.encoder == "mlp" else StoredImages
    inputs = form(data, (x_name, y_name), (split.train[has_x], split.train[has_y]), device)

    def tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # Labels and masks live beside their inputs, so the methods can index them together.
        return torch.as_tensor(np.ascontiguousarray(values), dtype=dtype, device=inputs.device)

    def evaluation_set(rows: np.ndarray) -> EvaluationSet:
        x, y = inputs.rows(rows)
        return EvaluationSet(x, y, tensor(data.labels[rows], torch.long), data.groups[rows])

    x, y = inputs.rows(split.train)
    x_present, y_present = tensor(has_x, torch.bool), tensor(has_y, torch.bool)
    x[~x_present] = 0  # nothing of a removed modality reaches training
    y[~y_present] = 0
    train = TrainingSet(x, y, tensor(data.labels[split.train], torch.long), x_present, y_present)
    x_input, y_input = inputs.modality_inputs
    return PreparedData(
        train=train,
        val=evaluation_set(split.val),
        test=evaluation_set(split.test),
        log_prior=log_label_prior(train.z, len(data.classes), spec.label_prior).to(device),
        classes=list(data.classes),
        info=_data_info(data, spec, split, missing, x_name, y_name, inputs.device),
        x_input=x_input,
        y_input=y_input,
        standardisation=getattr(inputs, "statistics", None),
    )


def _data_info(data: TwoViewData, spec: TrainSpec, split, missing, x_name: str, y_name: str,
               kept_on: torch.device) -> dict[str, Any]:
    """What the run records about its data (its `info`): the split, and the Bayes-optimal test
    accuracy where the true model is known (synthetic data)."""
    info: dict[str, Any] = {
        "x_modality": x_name,
        "y_modality": y_name,
        "split_by": spec.split_by,
        "n_train": int(len(split.train)),
        "n_train_complete": int(missing.complete.sum()),
        "n_train_missing": int(missing.y_missing.sum()),
        "n_train_missing_x": int(missing.x_missing.sum()),
        "realised_missing_rate": float(missing.y_missing.mean()),
        "n_val": int(len(split.val)),
        "n_test": int(len(split.test)),
        "n_test_groups": int(len(np.unique(data.groups[split.test]))),
        # The fingerprint of the split and missing mask this run trained on: what a script using
        # training/protocol.py (or the API's /api/protocol) gets for the same setting.
        "protocol_digest": digest_of(split, missing),
    }
    if data.oracle is not None:
        test_views = {m: data.views[m][split.test] for m in data.modalities}
        labels = data.labels[split.test]
        info["bayes_test_accuracy"] = {
            "xy": data.oracle.accuracy(test_views, labels),
            "x": data.oracle.accuracy({x_name: test_views[x_name]}, labels),
            "y": data.oracle.accuracy({y_name: test_views[y_name]}, labels),
        }
    if spec.encoder != "mlp":
        info["inputs_kept_on"] = str(kept_on)
    return info
