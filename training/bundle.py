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
from .prediction_inputs import (BOTH, FORMAT, FORMAT_VERSION, MANIFEST, NO_BUNDLE, STATE, X_ONLY, Y_ONLY,
                                NoModelBundle, PredictionInputError, check_inputs, prediction_rules, read_manifest)
from .prepare import ModalityInput
from .spec import TrainSpec

PREDICT_CHUNK = 4096


def reproducibility_record(device: torch.device | str, method: str | None = None) -> dict[str, Any]:
    """What the model was trained with: the run's reproducibility record (training/reproducibility.py:
    missmod, git commit, Python, torch, CUDA, device, plugin), and numpy's version."""
    from .reproducibility import record

    return {**record(device=str(device), method=method), "numpy": np.__version__}


def _model_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def bundle_bytes(*, spec: TrainSpec, model: torch.nn.Module, method: Method, epoch: int, classes: list[str],
                 log_prior: torch.Tensor, x_input: ModalityInput, y_input: ModalityInput,
                 x_modality: str, y_modality: str, standardisation: list | None, y_bank: torch.Tensor | None,
                 x_bank: torch.Tensor | None, device: torch.device, scores: dict[str, Any],
                 reproducibility: dict[str, Any] | None = None) -> bytes:
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
        "reproducibility": reproducibility or reproducibility_record(device, spec.method),
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
