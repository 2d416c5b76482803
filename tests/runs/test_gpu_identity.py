"""Which GPU a run's system metrics describe (worker/system_metrics.py: visible_gpu), against a
stand-in for NVML (no GPU here): NVML numbers GPUs by PCI bus and CUDA, unless told otherwise,
fastest first, so an index in CUDA_VISIBLE_DEVICES names the same GPU for both only with
CUDA_DEVICE_ORDER=PCI_BUS_ID."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker import system_metrics


class FakeNVML:
    """GPUs in PCI bus order, as NVML lists them."""

    def __init__(self, names: list[str]):
        self.gpus = [SimpleNamespace(index=i, uuid=f"GPU-{i:04d}", name=name) for i, name in enumerate(names)]

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return next(g for g in self.gpus if g.uuid == uuid)

    def nvmlDeviceGetIndex(self, handle):
        return handle.index

    def nvmlDeviceGetUUID(self, handle):
        return handle.uuid

    def nvmlDeviceGetName(self, handle):
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=16 * system_metrics.MIB * 1024)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(system_metrics, "_nvml", lambda: FakeNVML(["Tesla T4", "NVIDIA A100"]))


def test_an_index_names_nvmls_gpu_only_in_pci_bus_order(two_gpus):
    pci = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert system_metrics.visible_gpu({**pci, "CUDA_VISIBLE_DEVICES": "1"}).name == "NVIDIA A100"
    assert system_metrics.visible_gpu(pci).index == 0  # unset: CUDA's device 0
    # Fastest first (CUDA's default), index 1 may be the T4: no figures rather than another GPU's.
    assert system_metrics.visible_gpu({"CUDA_VISIBLE_DEVICES": "1"}) is None
    assert system_metrics.visible_gpu({}) is None
    # A UUID names one GPU whatever the order (what worker/gpu_worker.py sets).
    assert system_metrics.visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-0001"}).name == "NVIDIA A100"


def test_one_gpu_is_the_same_gpu_in_any_order(monkeypatch):
    monkeypatch.setattr(system_metrics, "_nvml", lambda: FakeNVML(["NVIDIA L4"]))
    assert system_metrics.visible_gpu({}).name == "NVIDIA L4"


def test_the_worker_sets_pci_bus_order_before_a_run_touches_cuda():
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    probe = "import os, worker.celery_app; print(os.environ['CUDA_DEVICE_ORDER'])"
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**environment, "VAR_DIR": str(ROOT / "var")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PCI_BUS_ID"
