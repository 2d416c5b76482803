"""Numeric precision of a run's training steps (the spec's `precision`), the field's standard
on GPUs: automatic mixed precision, with bf16 where the GPU computes it natively (Ampere and
later: same exponent range as fp32, no loss scaling needed) and fp16 with a gradient scaler
otherwise (Turing: fp16 gradients underflow without it). Parameters, optimiser state, the
likelihood (eq. 4/5: log-sum-exp over classes and over the reference set, training/likelihood.py)
and hgr's soft-HGR objective and H-score prediction stay in fp32; autocast runs the encoders'
convolutions and matrix products in 16 bits.

- auto: on CUDA, bf16 on GPUs of compute capability 8.0 and later (A100, RTX 30xx, L4, H100, …)
  and fp16 with a gradient scaler on Turing (7.5: T4, RTX 20xx), for the CNN encoders; fp32 for
  MLP encoders (feature vectors: small layers bound by launch overhead, where 16 bits buys nothing
  and fp32 keeps the features-mode results exact) and on the CPU (CPU autocast is slower than
  fp32 on most CPUs).
- fp32, bf16, fp16: as asked (bf16 on a GPU without native bf16 is refused; CPU autocast takes
  both bf16 and fp16).

Which GPUs run at all is the pinned torch wheel's to say (`torch.cuda.get_arch_list()`: sm_75
and later for the wheel in pyproject.toml): Volta (V100, TITAN V) and older are not among them
(training/device.py refuses them with that reason).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionUnavailable(ValueError):
    """The precision asked for cannot run on this device."""


def has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 itself (compute capability 8.0 and later). Not
    `torch.cuda.is_bf16_supported()`: by default it also counts bf16 emulated in fp32 units,
    which Turing offers, slower than fp16 with its scaler (the fp16 path never ran)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(choice: str, device: torch.device, encoder: str = "mlp") -> str:
    """The precision a run trains in: fp32, bf16 or fp16."""
    if choice == "auto":
        if device.type != "cuda" or encoder == "mlp":
            return "fp32"
        return "bf16" if has_native_bf16(device) else "fp16"
    if choice == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        raise PrecisionUnavailable(f"precision 'bf16' was requested but {torch.cuda.get_device_name(device)} has no "
                                   f"bf16; use 'fp16' (with a gradient scaler) or 'auto'")
    return choice


def autocast(precision: str, device: torch.device):
    """The context the forward pass and the loss run in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so small gradients do not flush to zero; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def describe(precision: str) -> str:
    """What the run records (run.info.precision)."""
    if precision == "fp32":
        return "fp32"
    scaler = " with a gradient scaler" if precision == "fp16" else ""
    return f"{precision} autocast{scaler} (parameters, optimiser and the likelihood in fp32)"
