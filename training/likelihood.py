"""Scores and conditional log-likelihoods of the paper's generalised softmax (§2.2.2).

Notation (docs/architecture.md §4): x is the modality always present, y the one that may be missing,
z the label among K classes. Encoders give f(x), g(y) ∈ R^k; the label head gives
h(z) = W·onehot(z) + b, stacked here as the matrix H whose row z is h(z) (shape K × dim φ).
The score is s(x, y, z) = φ(f(x), g(y))ᵀ h(z).

- eq. 4:  log Q(z|x,y) = log R_Z(z) + s(x,y,z) − logsumexp_z'[log R_Z(z') + s(x,y,z')]
- eq. 5:  log Q(z|x)   = log R_Z(z) + LSE_{y'∈S} s(x,y',z) − logsumexp_z'[… same with z' …]

R_Y is uniform over the reference set S of complete-data y's, so its 1/|S| cancels between
numerator and denominator of eq. 5 and never appears.

`marginal_scores` is the one trained with. For add and concat the score is separable,
s = fᵀh_f(z) + gᵀh_g(z), so LSE over y' is a single K-vector shared by the whole batch.
For outer, s = fᵀ H_z g is bilinear: one einsum over (samples × classes × S), then LSE over
S. `marginal_scores_bruteforce` materialises φ for every (sample, y') pair instead; it gives
the same numbers and exists for tests and benchmarks. When both modalities are partly
missing, samples that lost x are scored the same way with the roles of x and y swapped.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .fusion import fuse


def in_fp32(function):
    """Computes in fp32 even under mixed precision (autocast): scores of the likelihood are
    summed by log-sum-exp over classes and over the reference set (eq. 5), where 16-bit
    features would lose the small differences that decide the loss. With fp32 inputs and no
    autocast (the default) it changes nothing: the tensors pass through as they are."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device_type) and all(t.dtype != torch.float16 and t.dtype != torch.bfloat16
                                                               for t in tensors):
            return function(*args, **kwargs)
        with torch.autocast(device_type=device_type, enabled=False):
            widened = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            return function(*widened, **kwargs)

    return wrapper


def label_embeddings(head: torch.nn.Linear) -> torch.Tensor:
    """H with H[z] = h(z) = W·onehot(z) + b, shape (K, dim φ). The bias b is kept: it is
    constant over z, so it cancels in eq. 4, but it weights the y' differently in eq. 5."""
    return head.weight.T + head.bias


@in_fp32
def pair_scores(f: torch.Tensor, g: torch.Tensor, H: torch.Tensor, fusion: str) -> torch.Tensor:
    """s(x_i, y_i, z) for matched pairs: (B, k), (B, k), (K, dim φ) → (B, K)."""
    if fusion == "outer":
        k = f.shape[-1]
        return torch.einsum("ia,zab,ib->iz", f, H.view(-1, k, k), g)
    return fuse(f, g, fusion) @ H.T


def _separable_parts(H: torch.Tensor, fusion: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of H acting on f and on g: for add both are H, for concat the two halves."""
    if fusion == "add":
        return H, H
    if fusion == "concat":
        return H[:, :k], H[:, k:]
    raise ValueError(f"fusion {fusion!r} is not separable")


@in_fp32
def marginal_scores(known: torch.Tensor, reference: torch.Tensor, H: torch.Tensor, fusion: str,
                    missing: str = "y", freeze_class_offset: bool = False) -> torch.Tensor:
    """LSE over the reference set of s(·, ·, z), for samples with one modality missing → (B, K).

    missing="y" (eq. 5): `known` is f(x) (B, k) and `reference` is g(y') (|S|, k), giving
    LSE_{y'∈S} s(x_i, y', z). missing="x" (the mirror image, for samples that lost x):
    `known` is g(y) and `reference` is f(x'). Plug into `log_posterior` with the label prior.

    For add and concat the result is f(x)ᵀh_f(z) + c_z, with the class offset
    c_z = LSE_{y'∈S} g(y')ᵀh_g(z). `freeze_class_offset` (an ablation, separable fusions only)
    lets no gradient through c_z, into g or h; the value is the same.
    """
    k = known.shape[-1]
    if fusion == "outer":
        if freeze_class_offset:
            raise ValueError("outer product's score is not separable: eq. 5 has no class offset to freeze")
        # (B, K, |S|) in one contraction; opt_einsum picks the cheaper order.
        H3 = H.view(-1, k, k)
        if missing == "y":
            scores = torch.einsum("ia,zab,jb->izj", known, H3, reference)
        else:
            scores = torch.einsum("ja,zab,ib->izj", reference, H3, known)
        return torch.logsumexp(scores, dim=-1)
    H_f, H_g = _separable_parts(H, fusion, k)
    H_known, H_reference = (H_f, H_g) if missing == "y" else (H_g, H_f)
    reference_term = torch.logsumexp(reference @ H_reference.T, dim=0)  # (K,): one vector for the batch
    if freeze_class_offset:
        reference_term = reference_term.detach()
    return known @ H_known.T + reference_term


@in_fp32
def marginal_scores_bruteforce(known: torch.Tensor, reference: torch.Tensor, H: torch.Tensor, fusion: str,
                               missing: str = "y") -> torch.Tensor:
    """Same as `marginal_scores`, by materialising φ for all (sample, reference) pairs: (B, |S|, dim φ)."""
    pair = (known.unsqueeze(1), reference.unsqueeze(0))
    phi = fuse(*pair, fusion) if missing == "y" else fuse(pair[1], pair[0], fusion)
    return torch.logsumexp(phi @ H.T, dim=1)


@in_fp32
def log_posterior(scores: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """log Q(z|·) from scores (B, K): eq. 4 with `pair_scores`, eq. 5 with `marginal_scores`."""
    return F.log_softmax(scores + log_prior, dim=-1)


def log_label_prior(labels: torch.Tensor, n_classes: int, kind: str = "empirical") -> torch.Tensor:
    """log R_Z: empirical label frequencies of the training labels (complete and missing), the
    paper's choice; a class absent from training gets probability zero (log = −inf) and is never
    predicted. `kind="uniform"` (an ablation, spec `label_prior`): 1/K for every class, which
    cancels in eq. 4 and 5 and leaves the scores alone to carry the class frequencies."""
    if kind == "uniform":
        return torch.full((n_classes,), -math.log(n_classes), dtype=torch.get_default_dtype())
    counts = torch.bincount(labels, minlength=n_classes).to(torch.get_default_dtype())
    return torch.log(counts / counts.sum())
