"""The model bundle: the validation-selected model of a run with everything it needs to predict,
in one file, and `load_model(path)` to predict with it anywhere (docs/predict.md).

Checkpoints are for resuming (the last epoch, with the optimiser); the bundle is the model the
run reports: written at the epoch the selection rule chose, each time it chooses a new one, so
when the run ends it holds the selected epoch. It is a zip file of two members:

- `manifest.json` — what the model is, readable without torch (the API reads it to check a
  prediction request): format, epoch, method, fusion, the modality names and input shapes, the
  class names, which inputs it predicts from and by which rule, the spec, and the
  reproducibility record (versions of missmod, torch, numpy, Python; the training device);
- `state.pt` — tensors only (read with `weights_only=True`, never arbitrary pickle): the
  weights of the encoders and the head, what the method keeps to predict (the autoencoders'
  imputer, hgr's feature means), the label prior log R_Z, the standardisation statistics of
  vector inputs (image inputs carry theirs inside the encoder), and the reference banks of
  eq. 5: g(y') over the training y's that `evaluate_missing` marginalises over (the same
  seeded subset), and f(x') over complete training x's for predicting from y alone.

Prediction takes inputs as they are in the dataset (not standardised) and returns class
probabilities. Each method uses its own rule for a missing modality: eq. 5 for `mle` and
`lower_bound`, g = 0 for `zero_padding`, the imputer for `ae1`/`ae2`, the x–z rule for `hgr`.
With both x and y given, eq. 4 (hgr: its H-score rule). The numbers are those the run's
evaluation computed at the selected epoch, on the same device kind (the worker and `load_model`
predict in fp32 on the CPU; a run evaluated under mixed precision on a GPU may differ in the last
bits).
"""

from __future__ import annotations

import io
import json
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .checkpoint import CheckpointTarget
from .likelihood import log_posterior, marginal_scores, pair_scores
from .methods import Method, YBank, _features, make_method
from .prepare import ModalityInput
from .spec import TrainSpec

FORMAT = "missmod-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.pt"
NO_BUNDLE = "no model bundle: retrain to get one"
PREDICT_CHUNK = 4096

# Inputs a prediction is made from.
BOTH, X_ONLY, Y_ONLY = "x_and_y", "x_only", "y_only"

# Methods that can predict from y alone (x missing), and how, when they trained on samples that
# lacked x (`other_missing_rate` > 0): a rule the model never trained for is not offered (mle's
# eq. 5 over training x's gave chance accuracy on digits when no training sample lacked x).
Y_ONLY_RULES = {"mle": "eq. 5 with x and y swapped, over a bank of training x's",
                "zero_padding": "eq. 4 with f(x) = 0"}


class NoModelBundle(LookupError):
    """The run has no bundle (trained before bundles were written, or stopped before its first epoch)."""


class PredictionInputError(ValueError):
    """What is wrong with the inputs of a prediction; `field` names the input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def prediction_rules(method: str, trained_without_x: bool = False) -> dict[str, str]:
    """Which inputs a method's bundle predicts from, and by which rule."""
    without_y = {"mle": "eq. 5 over a bank of training y's", "lower_bound": "eq. 5 over a bank of training y's",
                 "zero_padding": "eq. 4 with g(y) = 0", "hgr": "H-score rule on f(x) and h_x(z)",
                 "ae1": "eq. 4 with y imputed from x", "ae2": "eq. 4 with y imputed from x"}
    rules = {BOTH: "H-score rule on φ(f(x), g(y))" if method == "hgr" else "eq. 4"}
    if method in without_y:
        rules[X_ONLY] = without_y[method]
    if method in Y_ONLY_RULES and trained_without_x:
        rules[Y_ONLY] = Y_ONLY_RULES[method]
    return rules


def reproducibility_record(device: torch.device | str) -> dict[str, Any]:
    """Versions the model was trained with (the reproducibility module's record where there is one)."""
    try:
        from . import reproducibility  # landed by another issue; optional here

        record = dict(reproducibility.record())  # type: ignore[attr-defined]
    except Exception:
        record = {}
    try:
        from importlib.metadata import version

        missmod_version = version("missmod")
    except Exception:
        missmod_version = None
    record.setdefault("missmod", missmod_version)
    record.setdefault("torch", torch.__version__)
    record.setdefault("numpy", np.__version__)
    record.setdefault("python", platform.python_version())
    record["trained_on"] = str(device)
    return record


def _model_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def bundle_bytes(*, spec: TrainSpec, model: torch.nn.Module, method: Method, epoch: int, classes: list[str],
                 log_prior: torch.Tensor, x_input: ModalityInput, y_input: ModalityInput,
                 x_modality: str, y_modality: str, standardisation: list | None, y_bank: torch.Tensor | None,
                 x_bank: torch.Tensor | None, device: torch.device, scores: dict[str, Any]) -> bytes:
    """The bundle of `model` as it is now (the trainer calls this at the selected epoch, after its
    evaluation, so the method's prediction statistics are this epoch's)."""
    model = _model_of(model)
    was_training = model.training
    model.eval()
    state: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "method": _to_cpu(method.prediction_state()),
        "log_prior": log_prior.detach().cpu(),
    }
    if standardisation is not None:
        state["standardisation"] = {name: {"mean": torch.from_numpy(np.asarray(mean).copy()),
                                           "std": torch.from_numpy(np.asarray(std).copy())}
                                    for name, (mean, std) in zip(("x", "y"), standardisation)}
    if y_bank is not None and len(y_bank):
        state["bank_g"] = _features(model.g, y_bank).float().cpu()
    if x_bank is not None and len(x_bank):
        state["bank_f"] = _features(model.f, x_bank).float().cpu()
    if was_training:
        model.train()
    rules = prediction_rules(spec.method, trained_without_x=spec.other_missing_rate > 0)
    if "bank_f" not in state and spec.method != "zero_padding":
        rules.pop(Y_ONLY, None)  # eq. 5 without x needs training x's to marginalise over
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "epoch": int(epoch), "method": spec.method,
        "fusion": spec.fusion, "dataset": spec.dataset,
        "x_modality": x_modality, "y_modality": y_modality,
        "x_shape": list(x_input.shape), "y_shape": list(y_input.shape),
        "classes": list(classes), "inputs": rules,
        "bank_size": int(len(y_bank)) if y_bank is not None else 0,
        "spec": spec.model_dump(mode="json"),
        "selected": scores,
        "reproducibility": reproducibility_record(device),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        state_buffer = io.BytesIO()
        torch.save(state, state_buffer)
        archive.writestr(STATE, state_buffer.getvalue())
    return buffer.getvalue()


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def write_bundle(target: Path | str | CheckpointTarget, data: bytes) -> None:
    """Atomically: a reader sees the previous bundle or this one, never half of one."""
    if isinstance(target, (str, Path)):
        with atomic_write(target) as file:
            file.write(data)
    else:
        target.write_bytes(data)


def read_manifest(source: Path | str | bytes | io.IOBase) -> dict[str, Any]:
    """The manifest alone (no torch needed for this part of the file)."""
    with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
        return json.loads(archive.read(MANIFEST))


@dataclass
class Prediction:
    probabilities: np.ndarray  # (n, K) float64 (from the model's float32)
    predicted: np.ndarray  # (n,) class index
    classes: list[str]
    inputs: str  # x_and_y, x_only or y_only
    rule: str

    @property
    def predicted_classes(self) -> list[str]:
        return [self.classes[i] for i in self.predicted]


class Model:
    """A bundle loaded for prediction: `predict(x=..., y=...)` with inputs as in the dataset."""

    def __init__(self, manifest: dict[str, Any], state: dict[str, Any]):
        self.manifest = manifest
        self.classes: list[str] = list(manifest["classes"])
        self.method_name: str = manifest["method"]
        self.epoch: int = manifest["epoch"]
        self.inputs: dict[str, str] = dict(manifest["inputs"])
        self.x_shape = tuple(manifest["x_shape"])
        self.y_shape = tuple(manifest["y_shape"])
        spec_fields = dict(manifest["spec"])
        spec_fields["pretrained"] = False  # the weights come from the bundle, not from a download
        spec_fields["device"] = "cpu"
        self.spec = TrainSpec.model_validate(spec_fields)
        self.method = make_method(self.spec)
        weights = state["model"]

        def modality(shape, name) -> ModalityInput:
            if self.spec.encoder == "mlp":
                return ModalityInput(tuple(shape))
            mean, std = weights[f"{name}.standardise.mean"], weights[f"{name}.standardise.std"]
            return ModalityInput(tuple(shape), mean.flatten(), std.flatten())

        self.model = self.method.build_model(modality(self.x_shape, "f"), modality(self.y_shape, "g"),
                                             len(self.classes))
        self.model.load_state_dict(weights)
        self.model.eval()
        self.method.load_prediction_state(state["method"], torch.device("cpu"))
        self.log_prior = state["log_prior"]
        self.standardisation = {name: (part["mean"].numpy(), part["std"].numpy())
                                for name, part in state.get("standardisation", {}).items()}
        self.bank = YBank.of_features(state["bank_g"]) if "bank_g" in state else None
        self.bank_f = state.get("bank_f")

    def __repr__(self) -> str:
        return (f"Model({self.method_name}, {self.spec.fusion}, epoch {self.epoch}, {len(self.classes)} classes, "
                f"x={self.manifest['x_modality']}{list(self.x_shape)}, y={self.manifest['y_modality']}{list(self.y_shape)})")

    # --- inputs -----------------------------------------------------------------------------

    def check_inputs(self, x: Any, y: Any) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """The inputs as float32 arrays of the model's shapes, and which are given; raises
        PredictionInputError naming the input at fault."""
        return check_inputs(self.manifest, x, y)

    def _tensor(self, values: np.ndarray, name: str) -> torch.Tensor:
        if name in self.standardisation:  # the same float32 arithmetic as training's preparation
            mean, std = self.standardisation[name]
            values = (values - mean) / std
        if self.spec.encoder != "mlp":
            values = values.astype(np.float32, copy=False)
        return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)

    # --- prediction -------------------------------------------------------------------------

    @torch.no_grad()
    def log_proba(self, x: Any = None, y: Any = None) -> tuple[torch.Tensor, str]:
        x_values, y_values, inputs = self.check_inputs(x, y)
        model, method, prior = self.model, self.method, self.log_prior
        pieces = []
        n = len(x_values if x_values is not None else y_values)
        for start in range(0, n, PREDICT_CHUNK):
            rows = slice(start, start + PREDICT_CHUNK)
            xs = None if x_values is None else self._tensor(x_values[rows], "x")
            ys = None if y_values is None else self._tensor(y_values[rows], "y")
            if inputs == BOTH:
                pieces.append(method.predict_log_proba(model, xs, ys, prior))
            elif inputs == X_ONLY:
                pieces.append(method.predict_log_proba_without_y(model, xs, prior, self.bank))
            else:
                pieces.append(self._without_x(ys))
        return torch.cat(pieces), inputs

    def _without_x(self, y: torch.Tensor) -> torch.Tensor:
        model, H = self.model, self.model.label_embeddings()
        g = model.g(y)
        if self.method_name == "zero_padding":
            return log_posterior(pair_scores(torch.zeros_like(g), g, H, model.fusion), self.log_prior)
        return log_posterior(marginal_scores(g, self.bank_f, H, model.fusion, missing="x"), self.log_prior)

    def predict(self, x: Any = None, y: Any = None) -> Prediction:
        """Class probabilities from x and y, x alone or (where the method can) y alone. Inputs:
        arrays of shape (n, *shape) or (*shape,) for one sample, as in the dataset."""
        log_proba, inputs = self.log_proba(x, y)
        probabilities = log_proba.exp().double().numpy()
        # The class the run's evaluation counts: the argmax of the log-probabilities.
        predicted = log_proba.argmax(1).numpy()
        return Prediction(probabilities, predicted, self.classes, inputs, self.inputs[inputs])

    def predict_proba(self, x: Any = None, y: Any = None) -> np.ndarray:
        return self.predict(x, y).probabilities


def _as_rows(values: Any, shape: tuple[int, ...], name: str, field: str, max_rows: int | None) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as error:
        raise PredictionInputError(field, f"not an array of numbers: {error}") from None
    if array.dtype.kind not in "iufb":
        raise PredictionInputError(field, f"{name} must hold numbers, got dtype {array.dtype}")
    if array.shape == shape:
        array = array[None]
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise PredictionInputError(field, f"{name} must have shape (n, {', '.join(map(str, shape))}) or "
                                          f"({', '.join(map(str, shape))},) for one sample; got {tuple(array.shape)}")
    if len(array) == 0:
        raise PredictionInputError(field, f"{name} has no rows")
    if max_rows is not None and len(array) > max_rows:
        raise PredictionInputError(field, f"{len(array):,} rows; at most {max_rows:,} per request")
    with np.errstate(over="ignore", invalid="ignore"):
        array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array.reshape(len(array), -1)))[0][0])
        raise PredictionInputError(field, f"{name} has NaN or infinite values (first in row {row}) as float32")
    return array


def check_inputs(manifest: dict[str, Any], x: Any, y: Any,
                 max_rows: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The checks every prediction's inputs pass, where they are sent (the API) and where they are
    used (the worker, `load_model`): shapes, finiteness (as float32), row counts, and whether the
    method predicts from what is given."""
    x_name, y_name = manifest["x_modality"], manifest["y_modality"]
    if x is None and y is None:
        raise PredictionInputError("x", f"give x ({x_name}), y ({y_name}), or both")
    x_values = None if x is None else _as_rows(x, tuple(manifest["x_shape"]), f"x ({x_name})", "x", max_rows)
    y_values = None if y is None else _as_rows(y, tuple(manifest["y_shape"]), f"y ({y_name})", "y", max_rows)
    if x_values is not None and y_values is not None and len(x_values) != len(y_values):
        raise PredictionInputError("y", f"x has {len(x_values)} rows but y has {len(y_values)}")
    inputs = BOTH if x_values is not None and y_values is not None else X_ONLY if x_values is not None else Y_ONLY
    if inputs not in manifest["inputs"]:
        missing = "y" if inputs == X_ONLY else "x"
        raise PredictionInputError(missing, f"method {manifest['method']} cannot predict without {missing} "
                                            f"({x_name if missing == 'x' else y_name}); it predicts from "
                                            f"{' or '.join(manifest['inputs'])}")
    return x_values, y_values, inputs


def load_model(path: str | Path | bytes) -> Model:
    """A model bundle (`model.zip`, from `missmod runs download ID` or GET /api/runs/{id}/model)
    loaded on the CPU, ready to `predict(x=..., y=...)`."""
    source = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    try:
        with zipfile.ZipFile(source) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"not a missmod model bundle (format {manifest.get('format')!r})")
            if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"bundle format {manifest['format_version']} is newer than this missmod reads "
                                 f"({FORMAT_VERSION}): upgrade missmod")
            state = torch.load(io.BytesIO(archive.read(STATE)), map_location="cpu", weights_only=True)
    except (KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"not a missmod model bundle: {error}") from None
    return Model(manifest, state)


def bank_rows(has: torch.Tensor, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of a seeded subset of at most `limit` training samples that have the modality."""
    rows = torch.nonzero(has).flatten().cpu().numpy()
    if len(rows) > limit:
        rows = np.sort(rng.choice(rows, limit, replace=False))
    return rows


__all__ = ["BOTH", "NO_BUNDLE", "X_ONLY", "Y_ONLY", "Model", "NoModelBundle", "Prediction", "PredictionInputError",
           "bundle_bytes", "check_inputs", "load_model", "prediction_rules", "read_manifest", "write_bundle"]
