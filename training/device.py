"""Which device a run (or a feature extraction) computes on: the spec's `device` choice
(`auto`, `cpu`, `cuda`) made concrete. CUDA is touched here, inside the task, never in the
worker's parent process.

A GPU runs only if the installed torch carries kernels for it: the pinned wheel's list
(`torch.cuda.get_arch_list()`) starts at sm_75 (Turing), so Volta (V100, TITAN V: compute
capability 7.0) and older GPUs are refused here with that reason, instead of failing at the first
kernel with "no kernel image is available for execution on the device"."""

from __future__ import annotations

import re

import torch


class UnsupportedGPU(RuntimeError):
    """The GPU is older than every architecture the installed torch was built for."""


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for `arch_list` runs on a GPU of compute `capability`. Code built
    for sm_XY runs on X.Y and on later GPUs of the same major version; sm_XYa only on X.Y; PTX
    (compute_XY) is compiled by the driver for X.Y and any later GPU (NVIDIA's CUDA compatibility
    guide)."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
        if match is None:
            continue
        kind, major, minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        if suffix == "a" and capability != (major, minor):
            continue
        if kind == "compute" and capability >= (major, minor):
            return True
        if kind == "sm" and capability[0] == major and capability[1] >= minor:
            return True
    return False


def check_supported(device: torch.device) -> None:
    if device.type != "cuda":
        return
    capability, arch_list = torch.cuda.get_device_capability(device), torch.cuda.get_arch_list()
    if arch_list and not runs_on(capability, arch_list):
        raise UnsupportedGPU(
            f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]}) cannot run this "
            f"torch {torch.__version__}, built for {', '.join(arch_list)} only: use a GPU of compute capability 7.5 or "
            f"later (Turing, Ampere, Ada, Hopper, Blackwell), or device 'cpu'")


def pick_device(choice: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU. `cuda` on a host without a usable GPU is
    an error rather than a silent (and much slower) run on the CPU; so is a GPU this torch
    cannot run on."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but this worker has no usable CUDA GPU")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    check_supported(device)
    return device
