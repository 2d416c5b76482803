"""The network every method shares, so comparisons are fair: encoders f (for x) and g (for
y) and the label head h(z) = W·onehot(z) + b sized for the fusion (paper Fig. 2). The
encoders are MLPs on (standardised) vectors, or CNNs on images (encoders.py), as the spec's
`encoder` says; both modalities get the same kind."""

from __future__ import annotations

import math

import torch
from torch import nn

from .fusion import fused_dim
from .likelihood import label_embeddings
from .prepare import ModalityInput
from .spec import TrainSpec

MLP_EVAL_CHUNK = 4096


class MLPEncoder(nn.Sequential):
    """Flattened input → two hidden ReLU layers → k features (no output activation)."""

    def __init__(self, in_dim: int, hidden_dim: int, feature_dim: int):
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim),
        )


class TwoViewModel(nn.Module):
    """f, g and h shared by every method. `single_view_heads` adds label heads h_x, h_y of
    size k for methods that relate one modality alone to the label (hgr)."""

    def __init__(self, f: nn.Module, g: nn.Module, feature_dim: int, n_classes: int, fusion: str,
                 single_view_heads: bool = False):
        super().__init__()
        self.f = f
        self.g = g
        self.fusion = fusion
        self.feature_dim = feature_dim
        self.h = nn.Linear(n_classes, fused_dim(feature_dim, fusion))
        if single_view_heads:
            self.h_x = nn.Linear(n_classes, feature_dim)
            self.h_y = nn.Linear(n_classes, feature_dim)

    def label_embeddings(self) -> torch.Tensor:
        """H: row z is h(z), shape (K, dim φ)."""
        return label_embeddings(self.h)

    @property
    def eval_chunk(self) -> int:
        """Rows per forward pass when an encoder runs over a whole split without gradients."""
        return min(getattr(self.f, "eval_chunk", MLP_EVAL_CHUNK), getattr(self.g, "eval_chunk", MLP_EVAL_CHUNK))


def mlp_two_view_model(x_dim: int, y_dim: int, hidden_dim: int, feature_dim: int, n_classes: int, fusion: str,
                       single_view_heads: bool = False) -> TwoViewModel:
    return TwoViewModel(
        MLPEncoder(x_dim, hidden_dim, feature_dim),
        MLPEncoder(y_dim, hidden_dim, feature_dim),
        feature_dim,
        n_classes,
        fusion,
        single_view_heads,
    )


def make_encoder(spec: TrainSpec, modality: ModalityInput) -> nn.Module:
    if spec.encoder == "mlp":
        return MLPEncoder(math.prod(modality.shape), spec.hidden_dim, spec.feature_dim)
    from .encoders import ImageEncoder

    return ImageEncoder(spec.encoder, modality.shape, spec.feature_dim, modality.mean, modality.std, spec.pretrained)


def two_view_model(spec: TrainSpec, x: ModalityInput, y: ModalityInput, n_classes: int,
                   single_view_heads: bool = False) -> TwoViewModel:
    """The spec's encoders for x and y, and the head for its fusion."""
    if spec.encoder == "mlp":  # the same construction (and random draws) as always
        return mlp_two_view_model(math.prod(x.shape), math.prod(y.shape), spec.hidden_dim, spec.feature_dim,
                                  n_classes, spec.fusion, single_view_heads)
    return TwoViewModel(make_encoder(spec, x), make_encoder(spec, y), spec.feature_dim, n_classes, spec.fusion,
                        single_view_heads)


class MLPImputer(nn.Sequential):
    """x → y regression network of the autoencoder baselines (on flattened inputs)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_shape: tuple[int, ...]):
        out_dim = 1
        for size in out_shape:
            out_dim *= size
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
            nn.Unflatten(1, out_shape),
        )
