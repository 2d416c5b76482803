"""What a model bundle says of itself and the checks every prediction's inputs pass, without
torch: the API reads a bundle's manifest and checks a request here before a worker predicts
(training/bundle.py holds the model itself)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "missmod-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.pt"
NO_BUNDLE = "no model bundle: retrain to get one"

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
    rules = {BOTH: "H-score rule on φ(f(x), g(y))" if method == "hgr" else
             "eq. 4" if method in without_y else f"{method}'s predict_log_proba"}
    # A plugin's method predicts as its own predict_log_proba_without_y says (docs/methods.md).
    rules[X_ONLY] = without_y.get(method, f"{method}'s predict_log_proba_without_y")
    if method in Y_ONLY_RULES and trained_without_x:
        rules[Y_ONLY] = Y_ONLY_RULES[method]
    return rules


def read_manifest(source: Path | str | bytes | io.IOBase) -> dict[str, Any]:
    """The manifest alone (no torch needed for this part of the file)."""
    with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
        return json.loads(archive.read(MANIFEST))


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


