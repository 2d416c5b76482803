"""The training loop: `train(spec, callback)` runs one spec from data to test accuracy.

Protocol (paper §3.2): stratified 70/15/15 split by group (or by subject); the missing
modality removed from `missing_rate` of the training groups; each epoch is evaluated on
complete validation and test data; the model is selected on validation accuracy (the spec's
selection rule: training/selection.py) and the test accuracy of that epoch is reported, with its
confusion matrix. Probabilities of samples that share a group (segments of one video) are
averaged before the group's label is predicted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import bank_rows, bundle_bytes, reproducibility_record, write_bundle
from .checkpoint import load_checkpoint, random_state, restore_random_state, save_checkpoint, spec_fingerprint
from .datasets import DatasetError, DatasetInfo, UnknownDatasetError, dataset_info, load_dataset, prepare_raw_dataset
from .device import pick_device
from .methods import Batch, Method, ReferenceInputs, YBank, make_method
from .model import TwoViewModel
from .prepare import EvaluationSet, PreparedData, TrainingSet, prepare_data
from .selection import EpochScore, improves
from .spec import METHODS, TrainSpec, spec_errors_for_dataset
from .step_log import StepLog
from .speed import EpochClock, TrainingSpeed

# With S = every complete training sample, each step runs g over all of S. Affordable for
# feature vectors and small data; above this many complete samples `auto` uses the batch.
ALL_COMPLETE_REFERENCE_LIMIT = 4096
# Test-time eq. 5 (evaluate_missing) marginalises over at most this many training y's.
Y_BANK_LIMIT = 4096
EVAL_CHUNK = 4096


class TrainingCallback:
    """Hooks the loop calls; subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        """Progress of a stage before the classifier's epochs (the autoencoders' imputer)."""

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        """Progress of a stage that is not counted in epochs (preprocessing a raw dataset: clips);
        should_stop() is asked after each call."""

    def on_step(self, epoch: int, step: int, metrics: dict[str, float], progress: dict[str, Any]) -> None:
        """Every `log_every_steps` optimiser steps and at each epoch's last step: per-step metrics
        (named step/...) at global step `step`, and where the epoch is (training/step_log.py)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_trained(self, epoch: int, samples: int, seconds: float) -> None:
        """Before on_epoch_end: the epoch's training steps took `seconds` for `samples` samples
        (evaluation excluded), for samples per second."""

    def should_stop(self) -> bool:
        """Checked after every epoch: True ends training early (cancel)."""
        return False

    def before_checkpoint(self, epoch: int) -> None:
        """Just before the checkpoint after `epoch` is written (0: before the first epoch): what
        was reported up to there must be durable by the time this returns (a callback that
        writes in the background waits here for its writes), since a resumed run does not
        report those epochs again."""

    def should_abort(self) -> bool:
        """Checked between batches: True abandons the run at once (TrainingAborted), mid-epoch,
        with nothing more reported (the run was deleted, or given to another worker)."""
        return False

    def stop_reason(self) -> "StopReason":
        """Why should_stop() said True: a cancel, unless the callback knows better (a worker
        shutting down stops a run that is to be resumed elsewhere)."""
        return StopReason.cancelled


class StopReason(StrEnum):
    """Why training ended."""

    finished = "finished"  # every epoch ran
    cancelled = "cancelled"  # someone asked it to stop; the run keeps what it has
    shutdown = "shutdown"  # its process is going away; resume it from the checkpoint elsewhere


@dataclass
class TrainResult:
    test_accuracy: float | None  # None when stopped before the first epoch
    val_accuracy: float | None
    best_epoch: int | None
    epochs_completed: int
    stopped: StopReason
    confusion_matrix: list[list[int]] | None  # test set, best epoch; rows true, columns predicted
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    # Test set, best epoch: the predicted and the true class of every sample (video, where groups
    # exist), in the split's order, which is the same for every method with the same seed: what
    # paired tests over test samples compare.
    test_predictions: list[int] | None = None
    test_labels: list[int] | None = None

    @property
    def stopped_early(self) -> bool:
        """Ended before its last epoch, for whatever reason (cancelled or shut down): `stopped`
        says which."""
        return self.stopped is not StopReason.finished


class TrainingAborted(Exception):
    """The callback asked to abandon the run mid-epoch (should_abort)."""


class SpecError(ValueError):
    """The spec does not fit the dataset (unknown modality, …)."""


def stratified_batches(kinds: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches over several kinds of samples (complete first), every batch holding
    each kind in the proportion of the data, and at least one complete sample: with fewer
    complete samples than batches, the batches grow instead."""
    complete = kinds[0]
    n_batches = math.ceil(sum(map(len, kinds)) / batch_size)
    if len(complete):
        n_batches = min(n_batches, len(complete))
    parts = [np.array_split(rng.permutation(rows), n_batches) for rows in kinds]
    return [np.concatenate(batch_parts) for batch_parts in zip(*parts)]


# A training sample's part of a batch: complete, y missing, x missing (the order of stratified_batches' kinds).
PARTS = 3


def part_sizes(parts_of_rows: np.ndarray) -> tuple[int, int, int]:
    """How many rows of a batch are complete, lack y, lack x, given each row's part in order: the
    methods take each part by slicing (training/methods.py: Batch), which holds only if the rows
    come part after part."""
    if np.any(parts_of_rows[1:] < parts_of_rows[:-1]):
        raise AssertionError("a batch's rows must come part after part: complete, y missing, x missing")
    complete, y_missing, x_missing = np.bincount(parts_of_rows, minlength=PARTS).tolist()
    return complete, y_missing, x_missing


def cycled_batches(rows: np.ndarray, batch_size: int, n_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n_batches` batches drawn from `rows` alone, reshuffling after each pass."""
    size = min(batch_size, len(rows))
    passes = math.ceil(n_batches * size / len(rows))
    stream = np.concatenate([rng.permutation(rows) for _ in range(passes)])
    return [stream[i * size : (i + 1) * size] for i in range(n_batches)]


def choose_reference_set(spec: TrainSpec, n_complete: int) -> str:
    if spec.reference_set != "auto":
        return spec.reference_set
    if spec.encoder != "mlp":  # g over every complete training image at each step: never cheap
        return "batch"
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
    loss: float  # mean −log Q(z|·) per sample
    confusion: np.ndarray
    predicted: np.ndarray | None = None  # per group (sample), in group order
    labels: np.ndarray | None = None

    def to_state(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "sample_accuracy": self.sample_accuracy, "loss": self.loss,
                "confusion": self.confusion.tolist(),
                "predicted": None if self.predicted is None else self.predicted.tolist(),
                "labels": None if self.labels is None else self.labels.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "Evaluation | None":
        if state is None:
            return None
        # Checkpoints written before predictions were kept have none: the run then reports none.
        predicted, labels = state.get("predicted"), state.get("labels")
        return cls(state["accuracy"], state["sample_accuracy"], state["loss"], np.array(state["confusion"]),
                   None if predicted is None else np.array(predicted, dtype=np.int64),
                   None if labels is None else np.array(labels, dtype=np.int64))


@dataclass
class BestEpoch:
    """The epoch chosen by the spec's selection rule (training/selection.py; by default the best
    validation accuracy, earliest among ties), with its test evaluations."""

    val_accuracy: float
    epoch: int
    test: Evaluation
    test_without_y: Evaluation | None  # evaluate_missing: test with y removed (eq. 5)
    val_loss: float | None = None  # what the val_loss rule compares; None in checkpoints from before it

    def to_state(self) -> list:
        # A list, as checkpoints have always stored it, so older checkpoints still resume; the
        # validation loss is appended (a checkpoint of four entries predates it).
        return [self.val_accuracy, self.epoch, self.test.to_state(),
                None if self.test_without_y is None else self.test_without_y.to_state(), self.val_loss]

    @classmethod
    def from_state(cls, state: list | None) -> "BestEpoch | None":
        if state is None:
            return None
        val_accuracy, epoch, test, test_without_y, *rest = state
        return cls(val_accuracy, epoch, Evaluation.from_state(test), Evaluation.from_state(test_without_y),
                   rest[0] if rest else None)

    def score(self) -> EpochScore:
        return EpochScore(self.epoch, self.val_accuracy, self.val_loss)


def score_predictions(log_proba: torch.Tensor, part: EvaluationSet) -> Evaluation:
    n_classes = log_proba.shape[1]
    z = part.z.cpu().numpy()
    sample_accuracy = float((log_proba.argmax(1).cpu().numpy() == z).mean())
    nll = float(F.nll_loss(log_proba.clamp_min(-1e4), part.z.to(log_proba.device)))
    probs, inverse = group_probabilities(log_proba, part.groups)
    group_label = np.zeros(len(probs), dtype=np.int64)
    group_label[inverse] = z
    predicted = probs.argmax(1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (group_label, predicted), 1)
    return Evaluation(float((predicted == group_label).mean()), sample_accuracy, nll, confusion,
                      predicted.astype(np.int64), group_label)


def in_chunks(predict, *tensors: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    n = len(tensors[0])
    return torch.cat([predict(*(t[i : i + chunk] for t in tensors)) for i in range(0, n, chunk)])


def _y_bank(train: TrainingSet, rng: np.random.Generator) -> torch.Tensor:
    """Training y's for test-time eq. 5: every complete sample's, or a seeded subset."""
    rows = torch.nonzero(train.has_y).flatten().cpu().numpy()
    if len(rows) > Y_BANK_LIMIT:
        rows = np.sort(rng.choice(rows, Y_BANK_LIMIT, replace=False))
    return train.y[torch.as_tensor(rows, device=train.y.device)]


class CheckpointPolicy:
    """When the loop writes a checkpoint: always before the first epoch (the prepared data: an
    imputer's work is not redone), after the last one, and when the run stops; in between, after
    an epoch once `every_seconds` have passed since the last checkpoint (0: after every epoch).

    An epoch of digits takes a few hundredths of a second, and a checkpoint (serialised, written,
    fsync'ed) a good part of that again: one per epoch slowed a tiny run through the worker
    (docs/benchmarks.md). A run killed between checkpoints resumes from the last one and
    replays the epochs after it; they are the same epochs (the checkpoint holds every generator's
    state) and their points are written once (insert-or-ignore), so resuming stays exact: at
    most `every_seconds` of training are done twice."""

    def __init__(self, every_seconds: float = 0.0, clock=time.monotonic):
        self.every_seconds, self.clock = every_seconds, clock
        self.saved_at: float | None = None

    def due(self, epoch: int, last_epoch: int, stopping: bool) -> bool:
        return (self.saved_at is None or epoch >= last_epoch or stopping
                or self.clock() - self.saved_at >= self.every_seconds)

    def saved(self) -> None:
        self.saved_at = self.clock()


class Trainer:
    """One run's state; `run()` is the epoch loop. With a checkpoint path, the state is saved
    as `checkpoint_every_seconds` says (CheckpointPolicy; by default after every epoch) and a
    later run of the same spec continues from it."""

    def __init__(self, spec: TrainSpec, callback: TrainingCallback, prepared: PreparedData, device: torch.device,
                 checkpoint_path: Path | None = None, checkpoint_every_seconds: float = 0.0, bundle_path=None):
        self.spec, self.callback, self.prepared, self.device = spec, callback, prepared, device
        self.checkpoint_path = checkpoint_path
        self.checkpoints = CheckpointPolicy(checkpoint_every_seconds)
        self.bundle_path = bundle_path  # where the selected model's bundle goes (training/bundle.py)
        self._reproducibility: dict[str, Any] | None = None  # the bundle's record, taken once
        self._unwritten_bundle: bytes | None = None  # selected, not yet written (flush_bundle)
        self.fingerprint = spec_fingerprint(spec.model_dump())
        self.method: Method = make_method(spec)
        self.batch_rng = np.random.default_rng([spec.seed, 2])
        train = prepared.train
        self.speed = TrainingSpeed.for_run(spec, device)
        self.model: TwoViewModel = self.speed.prepare_model(
            self.method.build_model(prepared.x_input, prepared.y_input, len(prepared.classes)).to(device))
        self._gather, self._gathering = None, None
        self._parts_of, self._parts_for = None, None
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                                          **self.speed.optimiser_options())
        self.steps_per_epoch = math.ceil(len(train.z) / spec.batch_size)
        self.y_bank = _y_bank(train, np.random.default_rng([spec.seed, 4])) if spec.evaluate_missing else None
        self.eval_seconds: float | None = None  # the last evaluation's duration, for the run's ETA

    def reference_inputs(self, train: TrainingSet) -> tuple[str, ReferenceInputs]:
        complete = train.complete
        if not self.method.uses_reference_set:
            return "none", ReferenceInputs()
        choice = choose_reference_set(self.spec, int(complete.sum()))
        if choice == "batch":
            return choice, ReferenceInputs()
        return choice, ReferenceInputs(y=train.y[complete], x=train.x[complete])

    def parts_of(self, train: TrainingSet) -> np.ndarray:
        """Each training sample's part (0 complete, 1 y missing, 2 x missing; -1 neither), read
        from the device once per training set."""
        if self._parts_for is not train:
            has_x, has_y = train.has_x.cpu().numpy(), train.has_y.cpu().numpy()
            parts = np.full(len(has_x), -1, dtype=np.int64)
            parts[has_x & has_y], parts[has_x & ~has_y], parts[~has_x & has_y] = 0, 1, 2
            self._parts_of, self._parts_for = parts, train
        return self._parts_of

    def epoch_batches(self, train: TrainingSet) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
        """The epoch's batches: each one's rows (complete, then y missing, then x missing) and the
        size of each of these parts."""
        parts = self.parts_of(train)
        complete = np.flatnonzero(parts == 0)
        if not self.method.trains_on_missing:
            return [(rows, (len(rows), 0, 0))
                    for rows in cycled_batches(complete, self.spec.batch_size, self.steps_per_epoch, self.batch_rng)]
        kinds = [complete, np.flatnonzero(parts == 1), np.flatnonzero(parts == 2)]
        return [(rows, part_sizes(parts[rows])) for rows in stratified_batches(kinds, self.spec.batch_size,
                                                                                self.batch_rng)]

    def batches_per_epoch(self, train: TrainingSet) -> int:
        """How many batches epoch_batches gives, without drawing them (that would move its RNG)."""
        if not self.method.trains_on_missing:
            return self.steps_per_epoch
        parts = self.parts_of(train)
        n_complete = int((parts == 0).sum())
        n_batches = math.ceil(int((parts >= 0).sum()) / self.spec.batch_size)
        return min(n_batches, n_complete) if n_complete else n_batches

    def train_epoch(self, train: TrainingSet, references: ReferenceInputs, epoch: int = 1) -> tuple[float, int]:
        """The epoch's mean training loss, and how many samples it trained on. Nothing is read
        back from the device between steps but the per-step metrics, in one read every
        `log_every_steps` steps (training/step_log.py): on a GPU the steps are queued back to back,
        and the next batch is gathered and copied while the current one computes."""
        self.model.train()
        if self._gathering is not train:  # the method may replace the training set (imputation)
            self._gather, self._gathering = self.speed.gatherer(train, self.spec.batch_size), train
        seen = 0
        batches = self.epoch_batches(train)
        # A callback written before per-step metrics (not a TrainingCallback subclass) has no on_step.
        report = getattr(self.callback, "on_step", None) or TrainingCallback().on_step
        log = StepLog(report, epoch=epoch, epochs=self.spec.epochs, steps=len(batches),
                      every=self.spec.log_every_steps, optimiser=self.optimiser,
                      terms=lambda: self.method.last_terms, eval_seconds=self.eval_seconds)
        # Callbacks written before these hooks (duck-typed ones too) may lack them.
        should_abort = getattr(self.callback, "should_abort", None) or TrainingCallback().should_abort
        for step, (rows, parts) in enumerate(batches, 1):
            if should_abort():
                raise TrainingAborted("abandoned mid-epoch at the caller's request")
            # Gathered where the data lives (the CPU for images, through pinned memory to a GPU).
            batch = Batch(*self._gather(rows), parts=parts)
            with self.speed.autocast():
                loss = self.method.loss(self.model, batch, self.prepared.log_prior, references)
            self.speed.step(loss, self.optimiser)
            seen += len(rows)
            log.after_step(step, loss, len(rows))
        return log.epoch_loss_sum / seen, seen

    @torch.no_grad()
    def evaluate(self, train: TrainingSet) -> tuple[Evaluation, Evaluation, Evaluation | None]:
        with self.speed.autocast():
            return self._evaluate(train)

    def _evaluate(self, train: TrainingSet) -> tuple[Evaluation, Evaluation, Evaluation | None]:
        self.model.eval()
        self.method.fit_statistics(self.model, train)
        log_prior = self.prepared.log_prior

        def complete(part: EvaluationSet) -> Evaluation:
            predict = lambda x, y: self.method.predict_log_proba(self.model, x, y, log_prior)
            return score_predictions(in_chunks(predict, part.x, part.y, chunk=self.model.eval_chunk), part)

        test_without_y = None
        if self.y_bank is not None:
            test, bank = self.prepared.test, YBank(self.y_bank)  # its g features: once per evaluation
            predict = lambda x: self.method.predict_log_proba_without_y(self.model, x, log_prior, bank)
            test_without_y = score_predictions(in_chunks(predict, test.x, chunk=self.model.eval_chunk), test)
        return complete(self.prepared.val), complete(self.prepared.test), test_without_y

    def select_bundle(self, best: BestEpoch) -> None:
        """The model as selected at `best.epoch`, with what it needs to predict (training/bundle.py),
        made into bytes right after that epoch's evaluation, so the model and the method's
        statistics are the ones its reported accuracy came from. The y bank is the one
        evaluate_missing uses (the same seeded rows), so predicting the test set without y
        reproduces its accuracy.

        The bytes are written by flush_bundle, with the next checkpoint or when the loop ends,
        not here: a fast run selects a new epoch every few epochs, and each write (replaced
        atomically, fsync'ed) held the training thread up (docs/benchmarks.md, the worker path)."""
        if self.bundle_path is None:
            return
        train = self.prepared.train
        y_bank = self.y_bank if self.y_bank is not None else _y_bank(train, np.random.default_rng([self.spec.seed, 4]))
        x_rows = bank_rows(train.has_x & train.has_y, Y_BANK_LIMIT, np.random.default_rng([self.spec.seed, 5]))
        x_bank = train.x[torch.as_tensor(x_rows, device=train.x.device)]
        scores = {"epoch": best.epoch, "val_accuracy": best.val_accuracy, "test_accuracy": best.test.accuracy,
                  "test_missing_accuracy": None if best.test_without_y is None else best.test_without_y.accuracy}
        if self._reproducibility is None:
            self._reproducibility = reproducibility_record(self.device, self.spec.method)
        with self.speed.autocast():
            data = bundle_bytes(spec=self.spec, model=self.model, method=self.method, epoch=best.epoch,
                                classes=self.prepared.classes, log_prior=self.prepared.log_prior,
                                x_input=self.prepared.x_input, y_input=self.prepared.y_input,
                                x_modality=self.prepared.info["x_modality"], y_modality=self.prepared.info["y_modality"],
                                standardisation=self.prepared.standardisation, y_bank=y_bank, x_bank=x_bank,
                                device=self.device, scores=scores, reproducibility=self._reproducibility)
        self._unwritten_bundle = data

    def flush_bundle(self) -> None:
        """Write the latest selected bundle, if not written yet: before each checkpoint (so a
        run resumed from it finds the bundle of the epoch it holds as best) and when the loop
        ends, however it ends."""
        if self._unwritten_bundle is not None:
            write_bundle(self.bundle_path, self._unwritten_bundle)
            self._unwritten_bundle = None

    def save(self, epoch: int, train: TrainingSet, best: BestEpoch | None) -> None:
        if self.checkpoint_path is None:
            return
        self.before_checkpoint(epoch)
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "batch_rng": self.batch_rng.bit_generator.state,
            # torch's generators (dropout, on the CPU and the GPU) and the fp16 loss scale: without
            # them a resumed run draws other dropout masks and restarts its scale at 2^16.
            "random": random_state(self.device),
            "method": self.method.state_dict(),
            "best": None if best is None else best.to_state(),
        }
        if self.speed.scaler is not None:
            state["scaler"] = self.speed.scaler.state_dict()
        if train is not self.prepared.train:  # the method changed the training data (imputation)
            state["train"] = {"x": train.x, "y": train.y, "has_x": train.has_x, "has_y": train.has_y}
        save_checkpoint(self.checkpoint_path, state)
        self.checkpoints.saved()

    def before_checkpoint(self, epoch: int) -> None:
        # Callbacks written before this hook (duck-typed ones too) simply do not have it.
        if (hook := getattr(self.callback, "before_checkpoint", None)) is not None:
            hook(epoch)

    def restore(self, state: dict[str, Any]) -> tuple[TrainingSet, BestEpoch | None]:
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.batch_rng.bit_generator.state = state["batch_rng"]
        # Checkpoints written before these were kept have neither: such a run resumes as it always did.
        if "random" in state:
            restore_random_state(state["random"], self.device)
        if "scaler" in state and self.speed.scaler is not None:
            self.speed.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"], self.device)
        train = self.prepared.train
        if "train" in state:
            saved = {k: v.to(self.device) for k, v in state["train"].items()}
            train = TrainingSet(saved["x"], saved["y"], train.z, saved["has_x"], saved["has_y"])
        return train, BestEpoch.from_state(state["best"])

    def setup_info(self, train: TrainingSet, reference_set: str, references: ReferenceInputs) -> dict[str, Any]:
        """How this run trains, for its record (on_start, then the result's info)."""
        return {
            "method": self.method.name,
            # Which package's code trained it (a plugin's distribution and version; missmod's own).
            "method_package": METHODS[self.spec.method].provenance(),
            "reference_set": reference_set,
            "reference_set_size": len(references.y) if references.y is not None else None,
            "steps_per_epoch": self.batches_per_epoch(train),
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            # test_accuracy and the confusion matrix are per group (video) when groups hold several
            # samples (segments), whose probabilities are averaged; test_sample_accuracy is per segment.
            "accuracy_level": "group" if self.prepared.test.grouped else "sample",
            **self.speed.describe(),
        }

    def epoch_metrics(self, train_loss: float, val: Evaluation, test: Evaluation,
                      test_without_y: Evaluation | None) -> dict[str, float]:
        metrics = {"train_loss": train_loss, "val_loss": val.loss, "val_accuracy": val.accuracy,
                   "test_accuracy": test.accuracy}
        if self.prepared.test.grouped:
            metrics["test_sample_accuracy"] = test.sample_accuracy
        if test_without_y is not None:
            metrics["test_missing_accuracy"] = test_without_y.accuracy
        return metrics

    def run(self) -> TrainResult:
        with self.speed.switches():
            return self._run()

    def _run(self) -> TrainResult:
        try:
            return self._epochs()
        finally:  # a run that stops early or fails keeps the bundle of its last selected epoch
            self.flush_bundle()

    def _epochs(self) -> TrainResult:
        started = time.perf_counter()
        info = dict(self.prepared.info)
        checkpoint = load_checkpoint(self.checkpoint_path, self.fingerprint)
        best: BestEpoch | None = None
        if checkpoint is not None:
            train, best = self.restore(checkpoint)
            self.checkpoints.saved()  # the one just read counts as the last
            first_epoch = checkpoint["epoch"] + 1
            info["resumed_from_epoch"] = checkpoint["epoch"]
        else:
            train = self.method.prepare(self.prepared.train, self.callback, self.spec.seed)
            if train is None:  # stopped while the method prepared its data (the imputer's epochs)
                return self.result(None, 0, self.callback.stop_reason(), info)
            first_epoch = 1
            self.save(0, train, None)
        reference_set, references = self.reference_inputs(train)
        info.update(self.setup_info(train, reference_set, references))
        self.callback.on_start(info)

        epochs_completed, stopped = first_epoch - 1, StopReason.finished
        for epoch in range(first_epoch, self.spec.epochs + 1):
            with EpochClock(self.device) as clock:
                train_loss, samples = self.train_epoch(train, references, epoch)
            # Callbacks written before this hook (duck-typed ones too) simply do not have it.
            if (on_epoch_trained := getattr(self.callback, "on_epoch_trained", None)) is not None:
                on_epoch_trained(epoch, samples, clock.seconds)
            evaluation_started = time.perf_counter()
            val, test, test_without_y = self.evaluate(train)
            self.eval_seconds = time.perf_counter() - evaluation_started
            if improves(self.spec.selection_rule, EpochScore(epoch, val.accuracy, val.loss),
                        None if best is None else best.score()):
                best = BestEpoch(val.accuracy, epoch, test, test_without_y, val.loss)
                # Written with the next checkpoint: a crash before it replays this epoch, which
                # selects it again.
                self.select_bundle(best)
            epochs_completed = epoch
            self.callback.on_epoch_end(epoch, self.epoch_metrics(train_loss, val, test, test_without_y))
            stopping = self.callback.should_stop()
            # After the points are reported: a crash in between replays the epochs since the last
            # checkpoint on resume, and idempotent writes keep the first of each replayed point,
            # leaving no gap. On the CPU the replayed points are identical; on a GPU they may
            # differ in the last bits (cuDNN's autotuning and kernels that sum with atomics are not
            # deterministic) unless the spec asks for `deterministic` (docs/gpu-host.md).
            if self.checkpoints.due(epoch, self.spec.epochs, stopping):
                self.flush_bundle()
                self.save(epoch, train, best)
            if stopping:
                stopped = self.callback.stop_reason()
                break
        if stopped is StopReason.shutdown and epochs_completed == self.spec.epochs:
            stopped = StopReason.finished  # nothing is left to resume elsewhere
        if self.speed.scaler is not None:  # fp16: where the loss scale ended (it halves at each overflow)
            info["loss_scale"] = self.speed.scaler.get_scale()
        info["seconds"] = round(time.perf_counter() - started, 3)
        return self.result(best, epochs_completed, stopped, info)

    def result(self, best: BestEpoch | None, epochs_completed: int, stopped: StopReason,
               info: dict[str, Any]) -> TrainResult:
        if best is None:
            return TrainResult(None, None, None, epochs_completed, stopped, None, self.prepared.classes, info)
        info["test_sample_accuracy"] = best.test.sample_accuracy
        if best.test_without_y is not None:
            info["test_missing_accuracy"] = best.test_without_y.accuracy
        return TrainResult(
            test_accuracy=best.test.accuracy, val_accuracy=best.val_accuracy, best_epoch=best.epoch,
            epochs_completed=epochs_completed, stopped=stopped, confusion_matrix=best.test.confusion.tolist(),
            classes=self.prepared.classes, info=info,
            test_predictions=None if best.test.predicted is None else best.test.predicted.tolist(),
            test_labels=None if best.test.labels is None else best.test.labels.tolist(),
        )


def _preprocess_as_a_stage(spec: TrainSpec, callback: TrainingCallback, data_dir: Path | None, video):
    """A raw audio-visual dataset not preprocessed yet is preprocessed first, reported as the
    run's `preprocessing` stage (resumable: a cancelled or crashed run keeps finished clips).
    Returns the preprocessing summary (None for other datasets), or False when stopped."""
    from .audiovisual.preprocess import PreprocessingFailed, PreprocessingStopped

    def progress(done: int, total: int, failed: int) -> bool:
        callback.on_stage_progress("preprocessing", done, total, {"failed_clips": failed})
        return not callback.should_stop()

    try:
        report = prepare_raw_dataset(spec.dataset, data_dir, video, progress)
    except PreprocessingStopped:
        return False
    except (DatasetError, PreprocessingFailed) as error:
        raise SpecError(f"dataset: dataset {spec.dataset!r} cannot be preprocessed: {error}") from None
    return None if report is None else report.summary()


def checked_dataset_info(spec: TrainSpec, data_dir: Path | None, video) -> DatasetInfo:
    """The dataset's catalogue entry, or SpecError naming what does not fit (before a long
    preprocessing, not after it). The catalogue describes a raw dataset as it will be once
    preprocessed, so this one check holds for the data loaded afterwards."""
    try:
        info = dataset_info(spec.dataset, data_dir, video)
    except UnknownDatasetError as error:
        raise SpecError(f"dataset: {error}") from None
    errors = spec_errors_for_dataset(spec, info)
    if errors:
        raise SpecError("; ".join(f"{e.field}: {e.message}" for e in errors))
    return info


def train(spec: TrainSpec, callback: TrainingCallback | None = None, *, data_dir: Path | None = None,
          checkpoint_path: Path | None = None, video=None, checkpoint_every_seconds: float = 0.0,
          bundle_path=None) -> TrainResult:
    """Train one spec. With `checkpoint_path`, continue from the checkpoint there (if it is of
    this spec) and save one after every epoch, or with `checkpoint_every_seconds`, after an epoch
    once that long has passed since the last one (and after the last epoch, and when stopped:
    CheckpointPolicy). With `bundle_path` (a path, or an object with `write_bytes`), write the
    model bundle of the selected epoch there, with the next checkpoint and when training ends
    (training/bundle.py: `load_model` predicts with it). `video` (audiovisual.catalog.VideoOptions): where the raw
    audio-visual datasets are and how they are preprocessed (default: DATA_DIR/<name>)."""
    callback = callback or TrainingCallback()
    info = checked_dataset_info(spec, data_dir, video)
    preprocessing = _preprocess_as_a_stage(spec, callback, data_dir, video)
    if preprocessing is False:
        return TrainResult(None, None, None, 0, callback.stop_reason(), None, list(info.classes),
                           {"stopped_in": "preprocessing"})
    try:
        data = load_dataset(spec.dataset, data_dir, video)
    except UnknownDatasetError as error:
        raise SpecError(f"dataset: {error}") from None
    except DatasetError as error:
        raise SpecError(f"dataset: dataset {spec.dataset!r} cannot be used: {error}") from None
    torch.manual_seed(spec.seed)
    device = pick_device(spec.device)
    prepared = prepare_data(data, spec, device)
    empty = [name for name, part in (("val", prepared.val), ("test", prepared.test)) if len(part.z) == 0]
    if empty:
        raise SpecError(f"dataset: dataset {spec.dataset!r} is too small to split 70/15/15 by "
                        f"{'subject' if spec.split_by == 'subject' else 'group'}: the {' and '.join(empty)} part would "
                        f"be empty (each class needs three groups or more)")
    if preprocessing is not None:
        prepared.info["preprocessing"] = preprocessing
    return Trainer(spec, callback, prepared, device, checkpoint_path, checkpoint_every_seconds, bundle_path).run()
