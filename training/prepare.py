"""From a dataset and a spec to tensors: split, missing-modality simulation, standardisation.

x is the modality that is always present in the paper's setting, y the one that may be
missing (`spec.missing_modality`); with `other_missing_rate` some samples lose x instead.
Inputs are standardised with statistics of the training samples that have the modality.
The removed modality is zeroed and flagged, so nothing of it reaches training.

Two forms of inputs, by the spec's encoder:
- `mlp`: every feature standardised here, float32 tensors on the training device (fast for
  feature vectors; the form every method was first written for);
- image encoders: inputs kept as stored (uint8 frames, float16 spectrograms) in CPU memory;
  per-channel statistics go to the encoder, which standardises each batch on the device.
  Tensors of a split (inputs, labels, masks) always share one device, so the methods' indexing
  works unchanged; the trainer moves each batch to the training device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .datasets import TwoViewData
from .likelihood import log_label_prior
from .protocol import choose_missing, stratified_group_split, subject_split
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


def _standardiser(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per input feature over `rows` (the training samples that have it)."""
    mean = values[rows].mean(axis=0)
    std = values[rows].std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


# Rows used to estimate the per-channel statistics of image inputs (evenly spaced, so the same
# for a given split): plenty for a mean and a std, and cheap on a large video dataset.
CHANNEL_STATISTICS_ROWS = 4096


def _channel_statistics(values: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rows = rows[:: max(1, len(rows) // CHANNEL_STATISTICS_ROWS)]
    sample = np.asarray(values[np.sort(rows)], dtype=np.float32)  # (n, C, H, W)
    mean = sample.mean(axis=(0, 2, 3), dtype=np.float64)
    std = sample.std(axis=(0, 2, 3), dtype=np.float64)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(np.where(std > 1e-6, std, 1.0),
                                                                       dtype=torch.float32)


def prepare_data(data: TwoViewData, spec: TrainSpec, device: torch.device) -> PreparedData:
    if spec.encoder != "mlp":
        return _prepare_images(data, spec, device)
    y_name = spec.missing_modality
    x_name = next(m for m in data.modalities if m != y_name)
    split, missing = _split_and_missing(data, spec)
    has_x, has_y = ~missing.x_missing, ~missing.y_missing
    x_mean, x_std = _standardiser(data.views[x_name], split.train[has_x])
    y_mean, y_std = _standardiser(data.views[y_name], split.train[has_y])

    def as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)

    def inputs(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (data.views[x_name][rows] - x_mean) / x_std
        y = (data.views[y_name][rows] - y_mean) / y_std
        return as_tensor(x, torch.float32), as_tensor(y, torch.float32)

    def evaluation_set(rows: np.ndarray) -> EvaluationSet:
        x, y = inputs(rows)
        return EvaluationSet(x, y, as_tensor(data.labels[rows], torch.long), data.groups[rows])

    x, y = inputs(split.train)
    x[~as_tensor(has_x, torch.bool)] = 0.0
    y[~as_tensor(has_y, torch.bool)] = 0.0
    train = TrainingSet(x, y, as_tensor(data.labels[split.train], torch.long),
                        as_tensor(has_x, torch.bool), as_tensor(has_y, torch.bool))

    info = _split_info(data, spec, split, missing, x_name, y_name)
    if data.oracle is not None:
        test_views = {m: data.views[m][split.test] for m in data.modalities}
        labels = data.labels[split.test]
        info["bayes_test_accuracy"] = {
            "xy": data.oracle.accuracy(test_views, labels),
            "x": data.oracle.accuracy({x_name: test_views[x_name]}, labels),
            "y": data.oracle.accuracy({y_name: test_views[y_name]}, labels),
        }
    return PreparedData(
        train=train,
        val=evaluation_set(split.val),
        test=evaluation_set(split.test),
        log_prior=log_label_prior(train.z, len(data.classes), spec.label_prior),
        classes=list(data.classes),
        info=info,
        x_input=ModalityInput(tuple(data.views[x_name].shape[1:])),
        y_input=ModalityInput(tuple(data.views[y_name].shape[1:])),
    )


def _split_info(data: TwoViewData, spec: TrainSpec, split, missing, x_name: str, y_name: str) -> dict[str, Any]:
    return {
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
    }


def _split_and_missing(data: TwoViewData, spec: TrainSpec):
    if spec.split_by == "subject":
        split = subject_split(data.labels, data.groups, data.subjects, spec.seed)
    else:
        split = stratified_group_split(data.labels, data.groups, spec.seed)
    missing = choose_missing(data.labels, data.groups, split.train, spec.missing_rate, spec.seed,
                             spec.other_missing_rate)
    return split, missing


def _prepare_images(data: TwoViewData, spec: TrainSpec, device: torch.device) -> PreparedData:
    """Image inputs: stored form, CPU memory, statistics for the encoders (module docstring)."""
    y_name = spec.missing_modality
    x_name = next(m for m in data.modalities if m != y_name)
    split, missing = _split_and_missing(data, spec)
    has_x, has_y = ~missing.x_missing, ~missing.y_missing
    x_mean, x_std = _channel_statistics(data.views[x_name], split.train[has_x])
    y_mean, y_std = _channel_statistics(data.views[y_name], split.train[has_y])

    def rows_of(name: str, rows: np.ndarray) -> torch.Tensor:
        # Sorted reads are sequential on a memory-mapped cache; the order is then restored.
        order = np.argsort(rows, kind="stable")
        values = np.empty((len(rows), *data.views[name].shape[1:]), dtype=data.views[name].dtype)
        values[order] = data.views[name][rows[order]]
        return torch.from_numpy(values)

    def evaluation_set(rows: np.ndarray) -> EvaluationSet:
        return EvaluationSet(rows_of(x_name, rows), rows_of(y_name, rows),
                             torch.as_tensor(data.labels[rows], dtype=torch.long), data.groups[rows])

    x, y = rows_of(x_name, split.train), rows_of(y_name, split.train)
    x[torch.from_numpy(~has_x)] = 0
    y[torch.from_numpy(~has_y)] = 0
    train = TrainingSet(x, y, torch.as_tensor(data.labels[split.train], dtype=torch.long),
                        torch.from_numpy(has_x.copy()), torch.from_numpy(has_y.copy()))
    info = {**_split_info(data, spec, split, missing, x_name, y_name), "inputs_kept_on": "cpu"}
    return PreparedData(
        train=train,
        val=evaluation_set(split.val),
        test=evaluation_set(split.test),
        log_prior=log_label_prior(train.z, len(data.classes), spec.label_prior).to(device),
        classes=list(data.classes),
        info=info,
        x_input=ModalityInput(tuple(data.views[x_name].shape[1:]), x_mean, x_std),
        y_input=ModalityInput(tuple(data.views[y_name].shape[1:]), y_mean, y_std),
    )
