"""The training objectives. Every method trains the same `TwoViewModel` and, on complete
test data, predicts with eq. 4 (the paper's protocol, §3.2: test data is modality-complete)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .likelihood import log_posterior, marginal_scores, pair_scores
from .model import TwoViewModel


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor  # rows where `complete` is False hold zeros and are never read
    z: torch.Tensor
    complete: torch.Tensor  # bool


class Method:
    name: ClassVar[str]
    # Whether the method's batches include samples whose y is missing (D_XZ).
    trains_on_missing: ClassVar[bool]
    # Whether the loss marginalises y over a reference set S (eq. 5).
    uses_reference_set: ClassVar[bool] = False

    def loss(self, model: TwoViewModel, batch: Batch, log_prior: torch.Tensor,
             reference_y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict_log_proba(self, model: TwoViewModel, x: torch.Tensor, y: torch.Tensor,
                          log_prior: torch.Tensor) -> torch.Tensor:
        """log Q(z|x,y), eq. 4."""
        scores = pair_scores(model.f(x), model.g(y), model.label_embeddings(), model.fusion)
        return log_posterior(scores, log_prior)


def _summed_nll(log_q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_q, z, reduction="sum")


class MaximumLikelihood(Method):
    """`mle` — the paper's method (§2.2, eq. 2).

    Loss per batch: [−Σ_{complete} log Q(z|x,y) (eq. 4) − Σ_{y missing} log Q(z|x) (eq. 5)] / B,
    an unbiased estimate of eq. 2 divided by the training-set size. In eq. 5 the sum over y'
    runs over the reference set S: every complete training sample (`reference_y` given; the
    paper's "all possible values of y on D_XYZ") or the complete samples of the batch
    (`reference_y` None; the batch sampler guarantees there is at least one). Gradients flow
    through g(y') for y' ∈ S, as in end-to-end training of eq. 2.
    """

    name = "mle"
    trains_on_missing = True
    uses_reference_set = True

    def loss(self, model, batch, log_prior, reference_y):
        H = model.label_embeddings()
        f = model.f(batch.x)
        complete, z = batch.complete, batch.z
        g_complete = model.g(batch.y[complete])
        total = _summed_nll(log_posterior(pair_scores(f[complete], g_complete, H, model.fusion), log_prior), z[complete])
        missing = ~complete
        if missing.any():
            g_reference = g_complete if reference_y is None else model.g(reference_y)
            if len(g_reference) == 0:
                raise RuntimeError("eq. 5 needs at least one complete sample in the reference set")
            scores = marginal_scores(f[missing], g_reference, H, model.fusion)
            total = total + _summed_nll(log_posterior(scores, log_prior), z[missing])
        return total / len(z)


class LowerBound(Method):
    """`lower_bound` — discard every sample whose y is missing (§3.3, "Lower Bound"); train eq. 4
    on D_XYZ only. The same network and the same number of optimiser steps per epoch as `mle`
    (batches are drawn from the complete samples only), so the gap to `mle` is what the
    modality-missing samples are worth, not a difference in training length. The label prior
    R_Z stays the one of all training labels, as in `mle`."""

    name = "lower_bound"
    trains_on_missing = False

    def loss(self, model, batch, log_prior, reference_y):
        scores = pair_scores(model.f(batch.x), model.g(batch.y), model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)


class ZeroPadding(Method):
    """`zero_padding` — the feature of the missing modality is replaced by zeros (§3.3, "ZP"):
    g(y) = 0 for samples whose y is missing, then eq. 4 on every training sample. With add,
    φ = f; with concat, φ = [f; 0]. Outer is refused: φ = vec(f ⊗ 0) = 0 makes the missing
    samples carry no information, as the paper notes. The padding is in feature space (after
    g), not in input space."""

    name = "zero_padding"
    trains_on_missing = True

    def loss(self, model, batch, log_prior, reference_y):
        f = model.f(batch.x)
        g = torch.zeros_like(f)
        g[batch.complete] = model.g(batch.y[batch.complete])
        scores = pair_scores(f, g, model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)


METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (MaximumLikelihood, LowerBound, ZeroPadding)}


def make_method(name: str) -> Method:
    return METHOD_CLASSES[name]()
