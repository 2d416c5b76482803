"""How a run uses its device at full speed, in one place, so the training loop stays a loop:

- precision (training/precision.py): autocast for the forward pass and the loss, a gradient
  scaler for fp16 (with the fused Adam, which takes the scaler's inf check on the device instead
  of a read back per step), the likelihood kept in fp32;
- CNN encoders on CUDA: channels-last memory layout, for the model and its inputs (what cuDNN's
  tensor-core convolutions read fastest), and `cudnn.benchmark` (inputs have few sizes per run,
  so the fastest algorithm is picked once per size);
- optional `torch.compile` of the encoders (`compile: true` in the spec; the first epoch pays
  for the compilation, later ones run fused kernels), with the batch dimension dynamic, since
  the parts of a batch and the evaluation chunks all have sizes of their own;
- batches delivered through pinned memory without blocking (training/batches.py);
- `deterministic: true`: the deterministic algorithms of cuDNN and cuBLAS (docs/gpu-host.md says
  what that does and does not make identical).

At the spec's defaults on the CPU none of this changes a number: fp32, the default memory
layout, plain indexing, no compilation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .batches import BatchGatherer
from .precision import autocast, describe, grad_scaler, resolve_precision

# cuBLAS picks its reduction order per call unless given a fixed workspace (NVIDIA's cuBLAS
# documentation, "Results reproducibility"); read when cuBLAS starts, in the run's process.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


class CompileUnavailable(ValueError):
    """`compile: true` on a host without the compiler torch.compile needs."""


def missing_compiler(device: torch.device, environ: dict[str, str] | None = None) -> str | None:
    """Why torch.compile cannot build its kernels here, or None. On a GPU, Triton compiles its
    kernel launcher with a C compiler the first time (the CC variable, else gcc or clang on the
    PATH); on the CPU, inductor compiles C++ (CXX, else g++, clang++ or c++)."""
    environ = os.environ if environ is None else environ
    if device.type == "cuda":
        names, variable, kind = ("gcc", "clang", "cc"), "CC", "a C compiler"
    else:
        names, variable, kind = ("g++", "clang++", "c++"), "CXX", "a C++ compiler"
    path = environ.get("PATH", "")
    if environ.get(variable) or any(shutil.which(name, path=path) for name in names):
        return None
    return (f"compile: true needs {kind} on the worker ({variable}, or one of {', '.join(names)} on the PATH): "
            f"torch.compile builds its {'Triton' if device.type == 'cuda' else 'C++'} kernels with it. Use the "
            f"worker image (Dockerfile.gpu, target worker), install one, or train with compile off")


@dataclass
class TrainingSpeed:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, resolved for this device
    channels_last: bool
    compiled: bool
    scaler: torch.amp.GradScaler | None
    cudnn_benchmark: bool = False
    deterministic: bool = False
    compile_backend: Any = "inductor"  # torch.compile's; tests count compilations with their own

    @classmethod
    def for_run(cls, spec, device: torch.device) -> "TrainingSpeed":
        images = spec.encoder != "mlp"
        precision = resolve_precision(getattr(spec, "precision", "auto"), device, spec.encoder)
        on_gpu = device.type == "cuda"
        compiled = bool(getattr(spec, "compile", False))
        deterministic = bool(getattr(spec, "deterministic", False))
        if compiled and (reason := missing_compiler(device)):
            raise CompileUnavailable(reason)
        return cls(device, precision, channels_last=on_gpu and images, compiled=compiled,
                   scaler=grad_scaler(precision, device), cudnn_benchmark=on_gpu and images and not deterministic,
                   deterministic=deterministic)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from .encoders import ImageEncoder, Standardise

        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            for module in model.modules():
                if isinstance(module, Standardise):  # the inputs too, as they are standardised
                    module.memory_format = torch.channels_last
        if self.compiled:
            # In place (nn.Module.compile): the state dict keeps its keys, so checkpoints still load.
            for name in ("f", "g"):
                encoder = getattr(model, name)
                if isinstance(encoder, ImageEncoder):
                    # The trunk alone: ImageEncoder.forward marks its batch dimension dynamic,
                    # which cannot be done inside a compiled function.
                    encoder.trunk.compile(backend=self.compile_backend)
                else:  # an MLP: batch and feature sizes, nothing to specialise on
                    encoder.compile(backend=self.compile_backend, dynamic=True)
        return model

    def optimiser_options(self) -> dict[str, Any]:
        """With a gradient scaler, the fused Adam: the scaler hands it the inf check as a tensor,
        where the plain Adam needs the scaler to read it back from the device at every step."""
        return {"fused": True} if self.scaler is not None else {}

    @contextlib.contextmanager
    def switches(self) -> Iterator[None]:
        """The process-wide switches the run needs, set while it trains and put back after (a
        script may train several runs in one process)."""
        cudnn = torch.backends.cudnn
        saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            if self.cudnn_benchmark:
                cudnn.benchmark = True
            if self.deterministic:
                cudnn.benchmark, cudnn.deterministic = False, True
                # warn_only: a few kernels have no deterministic form on CUDA (NLLLoss's, adaptive
                # average pooling's backward); PyTorch warns once for each instead of failing the run.
                torch.use_deterministic_algorithms(True, warn_only=True)
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
            yield
        finally:
            cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
            torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])

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
        if self.deterministic:
            info["deterministic"] = True
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
