"""Which device a run (or a feature extraction) computes on: the spec's `device` choice
(`auto`, `cpu`, `cuda`) made concrete. CUDA is touched here, inside the task, never in the
worker's parent process."""

from __future__ import annotations

import torch


def pick_device(choice: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU. `cuda` on a host without a usable GPU is
    an error rather than a silent (and much slower) run on the CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but this worker has no usable CUDA GPU")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)
