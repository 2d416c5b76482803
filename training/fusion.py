"""Fusion φ(f, g) of the two modality features (paper Fig. 3) and its output size.

With features f, g ∈ R^k:
- add:    φ = f + g                 ∈ R^k
- concat: φ = [f; g]                ∈ R^{2k}
- outer:  φ = vec(f ⊗ g)            ∈ R^{k²}, row-major: φ[a·k + b] = f_a g_b
"""

from __future__ import annotations

import torch

from .spec import FUSIONS  # one list, kept in the module that does not import torch


def fused_dim(feature_dim: int, fusion: str) -> int:
    if fusion == "add":
        return feature_dim
    if fusion == "concat":
        return 2 * feature_dim
    if fusion == "outer":
        return feature_dim * feature_dim
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def fuse(f: torch.Tensor, g: torch.Tensor, fusion: str) -> torch.Tensor:
    """φ(f, g) for feature batches of shape (..., k); broadcasting over leading dims."""
    if fusion == "add":
        return f + g
    if fusion == "concat":
        f, g = torch.broadcast_tensors(f, g)
        return torch.cat([f, g], dim=-1)
    if fusion == "outer":
        outer = f.unsqueeze(-1) * g.unsqueeze(-2)
        return outer.flatten(-2)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
