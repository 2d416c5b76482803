"""Decisions the trainer makes for a GPU, checked without one: which GPUs the pinned torch runs
on, what `precision: auto` picks on each, channels-last inputs, and torch.compile (a compiler
needed; the batch dimension dynamic, so the parts of a batch and the evaluation chunks do not
each compile again)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from training.device import UnsupportedGPU, check_supported, runs_on
from training.encoders import ImageEncoder, Standardise
from training.model import TwoViewModel
from training.precision import PrecisionUnavailable, resolve_precision
from training.prepare import ModalityInput
from training.spec import TrainSpec
from training.speed import CompileUnavailable, TrainingSpeed, missing_compiler

CUDA = torch.device("cuda")


def test_the_pinned_wheel_runs_on_turing_and_later_and_not_on_volta():
    arch_list = torch.cuda.get_arch_list()  # the installed wheel's own list
    assert arch_list, "a CUDA build of torch is pinned"
    assert not runs_on((7, 0), arch_list)  # V100, TITAN V
    for capability in ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (12, 0)):  # T4, A100, RTX 3090, L4, H100, RTX 5090
        assert runs_on(capability, arch_list), capability


def test_compatibility_rules_of_cubins_and_ptx():
    assert runs_on((8, 9), ["sm_86"]) and not runs_on((8, 6), ["sm_89"])  # later minor of the same major only
    assert not runs_on((9, 0), ["sm_86"]) and runs_on((9, 0), ["compute_86"])  # PTX: any later GPU
    assert runs_on((9, 0), ["sm_90a"]) and not runs_on((10, 0), ["sm_90a"])  # arch-specific: that GPU only


def fake_gpu(monkeypatch, capability: tuple[int, int], name: str = "a GPU") -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_a_volta_gpu_is_refused_with_the_reason(monkeypatch):
    fake_gpu(monkeypatch, (7, 0), "Tesla V100-SXM2-16GB")
    with pytest.raises(UnsupportedGPU, match=r"Tesla V100.*compute capability 7\.0.*7\.5 or later"):
        check_supported(CUDA)
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    check_supported(CUDA)


def test_auto_precision_is_bf16_from_ampere_on_and_fp16_with_a_scaler_on_turing(monkeypatch):
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100")
    assert resolve_precision("auto", CUDA, "resnet50") == "bf16"
    assert resolve_precision("auto", CUDA, "mlp") == "fp32"
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")  # bf16 only emulated: not counted
    assert resolve_precision("auto", CUDA, "resnet50") == "fp16"
    with pytest.raises(PrecisionUnavailable, match="Tesla T4"):
        resolve_precision("bf16", CUDA, "resnet50")


def image_model() -> TwoViewModel:
    torch.manual_seed(0)
    frames = ModalityInput((3, 16, 16), torch.full((3,), 100.0), torch.full((3,), 50.0))
    sound = ModalityInput((1, 16, 16), torch.zeros(1), torch.ones(1))
    return TwoViewModel(ImageEncoder("small_cnn", frames.shape, 8, frames.mean, frames.std),
                        ImageEncoder("small_cnn", sound.shape, 8, sound.mean, sound.std), 8, 3, "add")


def speed(**fields) -> TrainingSpeed:
    return TrainingSpeed(**{"device": torch.device("cpu"), "precision": "fp32", "channels_last": False,
                            "compiled": False, "scaler": None, **fields})


def test_channels_last_reaches_the_inputs_of_a_channels_last_model():
    frames = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    plain = image_model().eval()
    model = speed(channels_last=True).prepare_model(image_model()).eval()
    standardised = model.f.standardise(frames)
    assert standardised.is_contiguous(memory_format=torch.channels_last)
    assert not plain.f.standardise(frames).is_contiguous(memory_format=torch.channels_last)
    assert isinstance(model.f.standardise, Standardise)
    with torch.no_grad():
        assert torch.allclose(model.f(frames), plain.f(frames), atol=1e-5)


def test_compiled_encoders_take_any_batch_size_without_compiling_again():
    torch._dynamo.reset()
    counter = CompileCounter()
    model = speed(compiled=True, compile_backend=counter).prepare_model(image_model())
    frames = torch.randint(0, 255, (256, 3, 16, 16), dtype=torch.uint8)
    for size in (6, 7, 9, 12):  # the parts of batches: a size each
        model.f(frames[:size]).sum().backward()
    assert counter.frame_count == 1
    model.eval()
    with torch.no_grad():
        for size in (5, 11, 40, 100, 256, 17, 3, 64):  # evaluation chunks and their remainders
            model.f(frames[:size])
    # Evaluation compiles its own graph (no gradients, BatchNorm's other mode), and on the CPU once
    # more where the convolution backend changes with the batch size (15 rows): not once per size.
    assert counter.frame_count <= 3, counter.frame_count
    torch._dynamo.reset()


def test_compile_is_refused_with_the_reason_on_a_host_without_a_compiler(monkeypatch, tmp_path):
    bare = {"PATH": str(tmp_path)}
    assert "C compiler" in missing_compiler(CUDA, bare) and "C++ compiler" in missing_compiler(torch.device("cpu"), bare)
    assert missing_compiler(CUDA, {**bare, "CC": "/opt/cc"}) is None
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    spec = TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.5, compile=True)
    with pytest.raises(CompileUnavailable, match="compile: true needs a C\\+\\+ compiler"):
        TrainingSpeed.for_run(spec, torch.device("cpu"))


def test_deterministic_changes_nothing_on_the_cpu_and_leaves_the_switches_as_they_were():
    from training.checkpoint import spec_fingerprint
    from training.train import TrainingCallback, train

    class Points(TrainingCallback):
        def __init__(self):
            self.points = []

        def on_epoch_end(self, epoch, metrics):
            self.points.append(metrics)

    fields = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}
    plain, deterministic = Points(), Points()
    train(TrainSpec(**fields), plain)
    result = train(TrainSpec(**fields, deterministic=True), deterministic)
    assert plain.points == deterministic.points and result.info["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    # A checkpoint written before the field existed still resumes; one asking for it is another run's.
    default = TrainSpec(**fields).model_dump()
    assert spec_fingerprint(default) == spec_fingerprint({k: v for k, v in default.items() if k != "deterministic"})
    assert spec_fingerprint({**default, "deterministic": True}) != spec_fingerprint(default)
