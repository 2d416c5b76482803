"""How a run uses its device at full speed, in one place, so the training loop stays a loop:

- precision (training/precision.py): autocast for the forward pass and the loss, a gradient
  scaler for fp16, the likelihood kept in fp32;
- CNN encoders on CUDA: channels-last memory layout (what cuDNN's tensor-core convolutions read
  fastest) and `cudnn.benchmark` (inputs have one size per run, so the fastest algorithm is picked
  once);
- optional `torch.compile` of the encoders (`compile: true` in the spec; the first epoch pays
  for the compilation, later ones run fused kernels);
- batches delivered through pinned memory without blocking (training/batches.py).

At the spec's defaults on the CPU none of this changes a number: fp32, the default memory
layout, plain indexing, no compilation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .batches import BatchGatherer
from .precision import autocast, describe, grad_scaler, resolve_precision


@dataclass
class TrainingSpeed:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, resolved for this device
    channels_last: bool
    compiled: bool
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_run(cls, spec, device: torch.device) -> "TrainingSpeed":
        images = spec.encoder != "mlp"
        precision = resolve_precision(getattr(spec, "precision", "auto"), device, spec.encoder)
        on_gpu = device.type == "cuda"
        if on_gpu and images:
            torch.backends.cudnn.benchmark = True
        return cls(device, precision, channels_last=on_gpu and images, compiled=bool(getattr(spec, "compile", False)),
                   scaler=grad_scaler(precision, device))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compiled:
            # In place (nn.Module.compile): the state dict keeps its keys, so checkpoints still load.
            for name in ("f", "g"):
                getattr(model, name).compile()
        return model

    def autocast(self):
        return autocast(self.precision, self.device)

    def gatherer(self, train, max_rows: int) -> BatchGatherer:
        return BatchGatherer((train.x, train.y, train.z, train.has_x, train.has_y), self.device, max_rows)

    def step(self, loss: torch.Tensor, optimiser: torch.optim.Optimizer) -> None:
        optimiser.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimiser.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimiser)
        self.scaler.update()

    def describe(self) -> dict[str, Any]:
        """What the run records in its info."""
        info: dict[str, Any] = {"precision": describe(self.precision)}
        if self.channels_last:
            info["channels_last"] = True
        if self.compiled:
            info["compiled"] = True
        return info


class EpochClock:
    """Seconds of an epoch's training steps (evaluation excluded), for samples per second; on
    CUDA the clock waits for the queued kernels, so it measures the GPU's work, not the launches."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "EpochClock":
        self._sync()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
