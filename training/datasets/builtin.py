"""The datasets that ship with missmod:

- `digits`: scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), cut into two
  views, `top` (rows 0–3) and `bottom` (rows 4–7), 32 pixels each.
- `synthetic`: two views that are conditionally independent Gaussians given the class, with
  known parameters, so the Bayes-optimal accuracy from (x, y), x alone and y alone can be
  computed on any split: a ceiling for what a method can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..two_view import TwoViewData


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


def load_digits_halves() -> TwoViewData:
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


def load_synthetic(
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


BUILTIN_LOADERS = {"digits": load_digits_halves, "synthetic": load_synthetic}
