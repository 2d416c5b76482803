"""The training loop: `train(spec, callback)` runs one spec from data to test accuracy.

Protocol (paper §3.2): stratified 70/15/15 split by group; the missing modality removed
from `missing_rate` of the training groups; each epoch is evaluated on complete validation
and test data with eq. 4; the model is selected on validation accuracy and the test accuracy
of that epoch is reported, with its confusion matrix. Probabilities of samples that share a
group (segments of one video) are averaged before the group's label is predicted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import TwoViewData, load_dataset
from .likelihood import log_label_prior
from .methods import Batch, Method, make_method
from .model import TwoViewModel, mlp_two_view_model
from .protocol import choose_missing, stratified_group_split
from .spec import TrainSpec, spec_errors_for_dataset

# With S = every complete training sample, each step runs g over all of S. Affordable for
# feature vectors and small data; above this many complete samples `auto` uses the batch.
ALL_COMPLETE_REFERENCE_LIMIT = 4096
EVAL_CHUNK = 4096


class TrainingCallback:
    """Hooks the loop calls; subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        """Checked after every epoch: True ends training early (cancel)."""
        return False


@dataclass
class TrainResult:
    test_accuracy: float
    val_accuracy: float
    best_epoch: int
    epochs_completed: int
    cancelled: bool
    confusion_matrix: list[list[int]]  # test set, at the best epoch; rows true, columns predicted
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitTensors:
    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    groups: np.ndarray


@dataclass
class PreparedData:
    train: SplitTensors
    complete: torch.Tensor  # bool over training samples: y present
    val: SplitTensors
    test: SplitTensors
    log_prior: torch.Tensor
    classes: list[str]
    info: dict[str, Any]


class SpecError(ValueError):
    """The spec does not fit the dataset (unknown modality, …)."""


def _standardise(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature, estimated on `rows` only (the training samples that have it)."""
    mean = values[rows].mean(axis=0)
    std = values[rows].std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0)


def prepare_data(data: TwoViewData, spec: TrainSpec, device: torch.device) -> PreparedData:
    y_name = spec.missing_modality
    x_name = next(m for m in data.modalities if m != y_name)
    split = stratified_group_split(data.labels, data.groups, spec.seed)
    missing = choose_missing(data.labels, data.groups, split.train, spec.missing_rate, spec.seed)
    complete_rows = split.train[~missing]

    x_mean, x_std = _standardise(data.views[x_name], split.train)
    y_mean, y_std = _standardise(data.views[y_name], complete_rows)

    def tensors(rows: np.ndarray, y_present: np.ndarray | None = None) -> SplitTensors:
        x = (data.views[x_name][rows] - x_mean) / x_std
        y = (data.views[y_name][rows] - y_mean) / y_std
        if y_present is not None:
            y[~y_present] = 0.0  # the removed modality: nothing of it reaches training
        as_tensor = lambda a, dtype: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
        return SplitTensors(as_tensor(x, torch.float32), as_tensor(y, torch.float32),
                            as_tensor(data.labels[rows], torch.long), data.groups[rows])

    train = tensors(split.train, ~missing)
    n_classes = len(data.classes)
    info: dict[str, Any] = {
        "x_modality": x_name,
        "y_modality": y_name,
        "n_train": int(len(split.train)),
        "n_train_complete": int((~missing).sum()),
        "n_train_missing": int(missing.sum()),
        "realised_missing_rate": float(missing.mean()),
        "n_val": int(len(split.val)),
        "n_test": int(len(split.test)),
    }
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
        complete=torch.as_tensor(~missing, device=device),
        val=tensors(split.val),
        test=tensors(split.test),
        log_prior=log_label_prior(train.z, n_classes),
        classes=list(data.classes),
        info=info,
    )


def stratified_batches(complete: np.ndarray, missing: np.ndarray, batch_size: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches over complete and missing samples, every batch holding complete
    samples in the same proportion as the data (at least one: with fewer complete samples
    than batches, the batches grow instead)."""
    n_batches = math.ceil((len(complete) + len(missing)) / batch_size)
    if len(complete):
        n_batches = min(n_batches, len(complete))
    complete_parts = np.array_split(rng.permutation(complete), n_batches)
    missing_parts = np.array_split(rng.permutation(missing), n_batches)
    return [np.concatenate(parts) for parts in zip(complete_parts, missing_parts)]


def cycled_batches(rows: np.ndarray, batch_size: int, n_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n_batches` batches drawn from `rows` alone, reshuffling after each pass."""
    size = min(batch_size, len(rows))
    passes = math.ceil(n_batches * size / len(rows))
    stream = np.concatenate([rng.permutation(rows) for _ in range(passes)])
    return [stream[i * size : (i + 1) * size] for i in range(n_batches)]


def choose_reference_set(spec: TrainSpec, n_complete: int) -> str:
    if spec.reference_set != "auto":
        return spec.reference_set
    return "all_complete" if n_complete <= ALL_COMPLETE_REFERENCE_LIMIT else "batch"


def group_probabilities(log_proba: torch.Tensor, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average class probabilities over the samples of each group: (n_groups, K), group index."""
    probs = log_proba.exp().cpu().numpy()
    unique, inverse = np.unique(groups, return_inverse=True)
    summed = np.zeros((len(unique), probs.shape[1]))
    np.add.at(summed, inverse, probs)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    return summed / counts, inverse


@dataclass
class Evaluation:
    accuracy: float  # group level (sample level when every sample is its own group)
    sample_accuracy: float
    loss: float  # mean −log Q(z|x,y) per sample
    confusion: np.ndarray


@torch.no_grad()
def evaluate(method: Method, model: TwoViewModel, part: SplitTensors, log_prior: torch.Tensor) -> Evaluation:
    model.eval()
    log_proba = torch.cat([
        method.predict_log_proba(model, part.x[i : i + EVAL_CHUNK], part.y[i : i + EVAL_CHUNK], log_prior)
        for i in range(0, len(part.z), EVAL_CHUNK)
    ])
    n_classes = log_proba.shape[1]
    z = part.z.cpu().numpy()
    sample_accuracy = float((log_proba.argmax(1).cpu().numpy() == z).mean())
    nll = float(torch.nn.functional.nll_loss(log_proba.clamp_min(-1e4), part.z))
    probs, inverse = group_probabilities(log_proba, part.groups)
    group_label = np.zeros(len(probs), dtype=np.int64)
    group_label[inverse] = z
    predicted = probs.argmax(1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (group_label, predicted), 1)
    return Evaluation(float((predicted == group_label).mean()), sample_accuracy, nll, confusion)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but this worker has no usable CUDA GPU")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def train(spec: TrainSpec, callback: TrainingCallback | None = None, *, data_dir: Path | None = None) -> TrainResult:
    callback = callback or TrainingCallback()
    started = time.perf_counter()
    data = load_dataset(spec.dataset, data_dir)
    errors = spec_errors_for_dataset(spec, data.modalities)
    if errors:
        raise SpecError("; ".join(f"{e.field}: {e.message}" for e in errors))

    torch.manual_seed(spec.seed)
    batch_rng = np.random.default_rng([spec.seed, 2])
    device = pick_device(spec.device)
    prepared = prepare_data(data, spec, device)
    method = make_method(spec.method)
    train_part = prepared.train

    model = mlp_two_view_model(
        x_dim=int(np.prod(train_part.x.shape[1:])), y_dim=int(np.prod(train_part.y.shape[1:])),
        hidden_dim=spec.hidden_dim, feature_dim=spec.feature_dim, n_classes=len(prepared.classes),
        fusion=spec.fusion,
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

    complete_mask = prepared.complete.cpu().numpy()
    complete_rows = np.flatnonzero(complete_mask)
    missing_rows = np.flatnonzero(~complete_mask)
    steps_per_epoch = math.ceil(len(train_part.z) / spec.batch_size)
    reference_set = choose_reference_set(spec, len(complete_rows)) if method.uses_reference_set else "none"
    reference_y = train_part.y[complete_rows] if reference_set == "all_complete" else None
    info = {
        **prepared.info,
        "method": method.name,
        "reference_set": reference_set,
        "reference_set_size": len(complete_rows) if reference_set == "all_complete" else None,
        "steps_per_epoch": steps_per_epoch,
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    callback.on_start(info)

    best: tuple[float, int, Evaluation] | None = None  # (val accuracy, epoch, test evaluation)
    epochs_completed, cancelled = 0, False
    for epoch in range(1, spec.epochs + 1):
        model.train()
        if method.trains_on_missing:
            batches = stratified_batches(complete_rows, missing_rows, spec.batch_size, batch_rng)
        else:
            batches = cycled_batches(complete_rows, spec.batch_size, steps_per_epoch, batch_rng)
        loss_sum, seen = 0.0, 0
        for rows in batches:
            index = torch.as_tensor(rows, device=device)
            batch = Batch(train_part.x[index], train_part.y[index], train_part.z[index], prepared.complete[index])
            loss = method.loss(model, batch, prepared.log_prior, reference_y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(rows)
            seen += len(rows)

        val = evaluate(method, model, prepared.val, prepared.log_prior)
        test = evaluate(method, model, prepared.test, prepared.log_prior)
        if best is None or val.accuracy > best[0]:
            best = (val.accuracy, epoch, test)
        epochs_completed = epoch
        callback.on_epoch_end(epoch, {
            "train_loss": loss_sum / seen,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "test_accuracy": test.accuracy,
        })
        if callback.should_stop():
            cancelled = True
            break

    assert best is not None
    best_val, best_epoch, best_test = best
    info["seconds"] = round(time.perf_counter() - started, 3)
    info["test_sample_accuracy"] = best_test.sample_accuracy
    return TrainResult(
        test_accuracy=best_test.accuracy,
        val_accuracy=best_val,
        best_epoch=best_epoch,
        epochs_completed=epochs_completed,
        cancelled=cancelled,
        confusion_matrix=best_test.confusion.tolist(),
        classes=prepared.classes,
        info=info,
    )
