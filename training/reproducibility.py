"""What produced a number: the reproducibility record kept with every run (its `environment`).

missmod's version and the git commit of its code where it runs from a checkout, Python, torch,
CUDA and cuDNN, the device, the thread counts, the host, and the method's plugin (the
distribution that provides it and its version). Six months later this says what trained a run.

Plain facts read from the process; nothing here fails a run: a fact that cannot be read is None.
The client (missmod/environment.py) records the same keys for a run logged from a script.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import method_registry

# The keys of a record, in the order the run page and the CSV show them.
FIELDS = ("missmod_version", "git_commit", "python", "torch", "cuda", "cudnn", "device", "device_name",
          "torch_threads", "torch_interop_threads", "cpu_count", "host", "plugin", "plugin_version")

# How the run page names them.
LABELS = {"missmod_version": "missmod", "git_commit": "Git commit", "python": "Python", "torch": "torch",
          "cuda": "CUDA", "cudnn": "cuDNN", "device": "Device", "device_name": "Device name",
          "torch_threads": "torch threads", "torch_interop_threads": "torch inter-op threads",
          "cpu_count": "CPUs", "host": "Host", "plugin": "Method plugin", "plugin_version": "Plugin version"}

def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit(directory: Path = Path(__file__).resolve().parent) -> str | None:
    """The commit of the checkout this code runs from (with `+dirty` when it has local changes);
    None when it is installed from a wheel or git is not there."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def method_plugin(method: str | None) -> tuple[str | None, str | None]:
    """The distribution that provides `method` (training/method_registry.py: the entry-point group
    `missmod.methods`, built-in methods included) and its version; missmod's for a name it does
    not know."""
    if method:
        try:
            description = method_registry.registry().methods.get(method)
        except Exception:  # a broken installation must not cost the run its record
            description = None
        if description is not None and description.distribution:
            return description.distribution, description.version
    return "missmod", package_version("missmod")


def record(device: str | None = None, method: str | None = None) -> dict[str, Any]:
    """The record of this process, training `method` on `device` (e.g. "cuda:0", "cpu")."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # the training library trains with it; a light caller may not have it loaded
        except ImportError:
            torch = None
    plugin, plugin_version = method_plugin(method)
    facts: dict[str, Any] = {
        "missmod_version": package_version("missmod"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "cuda": None, "cudnn": None, "device": device, "device_name": None,
        "torch_threads": None, "torch_interop_threads": None,
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "plugin": plugin, "plugin_version": plugin_version,
    }
    if torch is not None:
        facts["cuda"] = torch.version.cuda
        facts["torch_threads"] = torch.get_num_threads()
        facts["torch_interop_threads"] = torch.get_num_interop_threads()
        try:
            facts["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
        except Exception:
            pass
        facts["device_name"] = device_name(torch, device)
    return facts


def device_name(torch, device: str | None) -> str | None:
    if device and device.startswith("cuda"):
        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return None
    return platform.processor() or platform.machine() or None
