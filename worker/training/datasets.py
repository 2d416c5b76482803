"""Two-view datasets behind one interface.

A dataset is two arrays of per-sample inputs (the modalities), integer labels, class names,
and groups: samples that share a group (segments of one video) are split together and are
missing together. Built in:

- `digits`: scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), cut into two
  views, `top` (rows 0–3) and `bottom` (rows 4–7), 32 pixels each.
- `synthetic`: two views that are conditionally independent Gaussians given the class, with
  known parameters, so the Bayes-optimal accuracy from (x, y), x alone and y alone can be
  computed on any split: a ceiling for what a method can reach.

This module uses numpy only, so the API can list datasets without importing torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:
        return f"unknown dataset {self.args[0]!r}"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    description: str
    modalities: tuple[str, str]
    classes: tuple[str, ...]
    n_samples: int
    n_groups: int
    shapes: dict[str, tuple[int, ...]]
    class_counts: tuple[int, ...]


@dataclass(frozen=True)
class GaussianOracle:
    """The true class-conditional model of the synthetic data: x|z ~ N(μx_z, σ²I),
    y|z ~ N(μy_z, σ²I), x ⫫ y | z, uniform prior. Gives the Bayes posterior of any view set."""

    means: dict[str, np.ndarray]  # modality → (K, d)
    noise_std: float
    prior: np.ndarray  # (K,)

    def log_posterior(self, views: dict[str, np.ndarray]) -> np.ndarray:
        """Unnormalised log posterior (n, K) from the views given (one or both modalities)."""
        log_joint = np.log(self.prior)[None, :]
        for modality, values in views.items():
            diff = values[:, None, :] - self.means[modality][None, :, :]
            log_joint = log_joint - 0.5 * (diff**2).sum(-1) / self.noise_std**2
        return log_joint

    def accuracy(self, views: dict[str, np.ndarray], labels: np.ndarray) -> float:
        return float((self.log_posterior(views).argmax(1) == labels).mean())


@dataclass(frozen=True)
class TwoViewData:
    name: str
    title: str
    description: str
    views: dict[str, np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray
    oracle: GaussianOracle | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.views) != 2:
            raise ValueError(f"a two-view dataset needs exactly two modalities, got {list(self.views)}")
        n = len(self.labels)
        for modality, values in self.views.items():
            if len(values) != n:
                raise ValueError(f"modality {modality!r} has {len(values)} samples, labels have {n}")
        if len(self.groups) != n:
            raise ValueError(f"groups have {len(self.groups)} entries, labels have {n}")

    @property
    def modalities(self) -> tuple[str, str]:
        first, second = self.views
        return first, second

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            title=self.title,
            description=self.description,
            modalities=self.modalities,
            classes=self.classes,
            n_samples=len(self.labels),
            n_groups=len(np.unique(self.groups)),
            shapes={m: tuple(v.shape[1:]) for m, v in self.views.items()},
            class_counts=tuple(int(c) for c in np.bincount(self.labels, minlength=len(self.classes))),
        )


def _load_digits() -> TwoViewData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (n, 8, 8), values 0..16
    n = len(images)
    return TwoViewData(
        name="digits",
        title="Digits (two halves)",
        description="scikit-learn's 8×8 handwritten digits; view `top` is rows 0–3, view `bottom` rows 4–7.",
        views={"top": images[:, :4, :].reshape(n, -1), "bottom": images[:, 4:, :].reshape(n, -1)},
        labels=digits.target.astype(np.int64),
        classes=tuple(str(c) for c in range(10)),
        groups=np.arange(n, dtype=np.int64),
    )


SYNTHETIC_SEED = 20_230_601  # the dataset is fixed, like a real one; run seeds vary the split


def _load_synthetic(
    n_per_class: int = 500, n_classes: int = 6, dims: tuple[int, int] = (16, 16),
    separations: tuple[float, float] = (0.55, 0.45), noise_std: float = 1.0,
) -> TwoViewData:
    """Class means drawn once from N(0, sep²I); the separations make `x` the stronger view."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    names = ("x", "y")
    means = {m: rng.normal(0.0, sep, size=(n_classes, d)) for m, d, sep in zip(names, dims, separations)}
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(labels)
    views = {
        m: (means[m][labels] + rng.normal(0.0, noise_std, size=(len(labels), means[m].shape[1]))).astype(np.float32)
        for m in names
    }
    return TwoViewData(
        name="synthetic",
        title="Synthetic Gaussian views",
        description=(
            f"{n_classes} classes, {n_per_class} samples each; views `x` ({dims[0]}-d) and `y` ({dims[1]}-d) are "
            "independent Gaussians given the class, so the Bayes-optimal accuracy is known."
        ),
        views=views,
        labels=labels.astype(np.int64),
        classes=tuple(f"class {c}" for c in range(n_classes)),
        groups=np.arange(len(labels), dtype=np.int64),
        oracle=GaussianOracle(means=means, noise_std=noise_std, prior=np.full(n_classes, 1.0 / n_classes)),
    )


_BUILTIN = {"digits": _load_digits, "synthetic": _load_synthetic}


@functools.cache
def _load_builtin(name: str) -> TwoViewData:
    return _BUILTIN[name]()


def dataset_names(data_dir: Path | None = None) -> list[str]:
    return list(_BUILTIN)


def load_dataset(name: str, data_dir: Path | None = None) -> TwoViewData:
    if name in _BUILTIN:
        return _load_builtin(name)
    raise UnknownDatasetError(name)


def dataset_info(name: str, data_dir: Path | None = None) -> DatasetInfo:
    return load_dataset(name, data_dir).info()


def dataset_infos(data_dir: Path | None = None) -> list[DatasetInfo]:
    return [dataset_info(name, data_dir) for name in dataset_names(data_dir)]
