"""What a GPU run would hit, shown on the CPU with its stand-ins (no GPU is lent to the tests):

- mixed precision: CPU autocast in bf16, and in fp16 with a gradient scaler, for every method with
  the MLP and with the small CNN: one epoch trains and evaluates (with the test-time missing
  modality too), the likelihood (eq. 4/5), soft-HGR and the H-score computed in fp32 while the
  encoders compute in 16 bits;
- host syncs: a training step reads nothing back from the device (each read would make the host
  wait for the GPU's queue to drain); the per-step metrics come back in one read every
  `log_every_steps` steps;
- resume: an fp16 run killed after its second epoch resumes with its loss scale and gives the
  points of the run that was never interrupted.
"""

from __future__ import annotations

import math
import traceback

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training import methods as methods_module
from training.datasets import load_dataset
from training.prepare import prepare_data
from training.spec import METHODS, TrainSpec
from training.train import Trainer, TrainingCallback, train

FP16_AND_BF16 = ("bf16", "fp16")


def digits_spec(method: str, **fields) -> TrainSpec:
    fusion = "concat" if method == "zero_padding" else "add"
    return TrainSpec.model_validate({"dataset": "digits", "method": method, "fusion": fusion,
                                     "missing_modality": "bottom", "missing_rate": 0.6, "other_missing_rate": 0.1,
                                     "epochs": 1, "seed": 1, "hidden_dim": 32, "feature_dim": 8, "imputer_epochs": 1,
                                     "self_training_rounds": 2, "device": "cpu", **fields})


@pytest.fixture(scope="module")
def image_data_dir(tmp_path_factory):
    """A features file of tiny images (3×16×16 uint8 frames, 1×16×16 float32 spectrograms): the
    smallest input the small CNN takes, with a class signal in both views."""
    root = tmp_path_factory.mktemp("data")
    (root / "features").mkdir()
    rng = np.random.default_rng(0)
    n, classes = 150, 3
    label = np.arange(n) % classes
    frames = rng.integers(0, 200, size=(n, 3, 16, 16)).astype(np.uint8) + (label * 20)[:, None, None, None].astype(np.uint8)
    sound = rng.standard_normal((n, 1, 16, 16)).astype(np.float32) + label[:, None, None, None]
    np.savez(root / "features" / "tiny_images.npz", label=label, frame=frames, sound=sound)
    return root


class DtypeWatch:
    """Records the dtypes that come out of the likelihood, soft-HGR and the H-score (wrapped where
    the methods call them), and out of the encoders f and g (a forward hook on every module)."""

    def __init__(self, monkeypatch):
        from training.encoders import ImageEncoder
        from training.model import MLPEncoder

        self.outputs: dict[str, set[torch.dtype]] = {}
        for name in ("log_posterior", "pair_scores", "marginal_scores", "soft_hgr", "fuse_in_fp32"):
            monkeypatch.setattr(methods_module, name, self._watched(name, getattr(methods_module, name)))
        h_score = methods_module.MaximalCorrelation._h_score
        monkeypatch.setattr(methods_module.MaximalCorrelation, "_h_score", self._watched("h_score", h_score))

        def encoder_output(module, inputs, output):
            if isinstance(module, (MLPEncoder, ImageEncoder)):
                self.outputs.setdefault("encoders", set()).add(output.dtype)

        self.hook = torch.nn.modules.module.register_module_forward_hook(encoder_output)

    def _watched(self, name, function):
        def watched(*args, **kwargs):
            output = function(*args, **kwargs)
            self.outputs.setdefault(name, set()).add(output.dtype)
            return output

        return watched


def stand_in_cases() -> list:
    return list(_stand_in_cases())


def _stand_in_cases():
    for method in METHODS:
        for precision in FP16_AND_BF16:
            yield pytest.param("mlp", method, precision, id=f"mlp-{method}-{precision}")
    for method in ("mle", "lower_bound", "zero_padding", "hgr"):  # ae1/ae2 impute inputs: feature vectors only
        for precision in FP16_AND_BF16:
            yield pytest.param("small_cnn", method, precision, id=f"small_cnn-{method}-{precision}")


@pytest.mark.parametrize(("encoder", "method", "precision"), stand_in_cases())
def test_every_method_trains_and_evaluates_under_autocast_with_the_likelihood_in_fp32(
        encoder, method, precision, monkeypatch, image_data_dir):
    watch = DtypeWatch(monkeypatch)
    fields = {"precision": precision, "evaluate_missing": True}
    if encoder == "mlp":
        spec, data_dir = digits_spec(method, **fields), None
    else:
        spec = digits_spec(method, dataset="tiny_images", missing_modality="sound", encoder="small_cnn",
                           batch_size=16, other_missing_rate=0.0, **fields)
        data_dir = image_data_dir
    try:
        result = train(spec, data_dir=data_dir)
    finally:
        watch.hook.remove()

    assert result.epochs_completed == 1 and 0.0 <= result.test_accuracy <= 1.0
    assert 0.0 <= result.info["test_missing_accuracy"] <= 1.0  # evaluated with y removed too
    assert result.info["precision"].startswith(f"{precision} autocast")
    assert watch.outputs["encoders"] & {torch.bfloat16, torch.float16}, "autocast did not reach the encoders"
    computed_in_fp32 = {"log_posterior", "pair_scores", "marginal_scores", "soft_hgr", "h_score", "fuse_in_fp32"}
    for name in computed_in_fp32 & set(watch.outputs):
        assert watch.outputs[name] == {torch.float32}, (name, watch.outputs[name])
    expected = {"hgr": {"soft_hgr", "h_score", "fuse_in_fp32"}}.get(method, {"log_posterior", "pair_scores"})
    assert expected <= set(watch.outputs)
    if precision == "fp16":
        assert result.info["loss_scale"] > 0


def test_hgr_statistics_and_predictions_are_fp32_under_bf16_autocast():
    spec = digits_spec("hgr", fusion="outer", precision="bf16")
    trainer, train_set, _ = trainer_for(spec)
    with torch.no_grad(), trainer.speed.autocast():
        trainer.method.fit_statistics(trainer.model, train_set)
        log_proba = trainer.method.predict_log_proba(trainer.model, trainer.prepared.test.x, trainer.prepared.test.y,
                                                     trainer.prepared.log_prior)
    assert trainer.method.mean_phi.dtype == trainer.method.mean_f.dtype == torch.float32
    assert log_proba.dtype == torch.float32
    # The same features, widened: the prediction is the fp32 computation on them, argmax for argmax.
    with torch.no_grad():
        with trainer.speed.autocast():
            f, g = trainer.model.f(trainer.prepared.test.x), trainer.model.g(trainer.prepared.test.y)
        phi = methods_module.fuse(f.float(), g.float(), "outer")
        exact = trainer.method._h_score(phi, trainer.method.mean_phi, trainer.model.label_embeddings(),
                                        trainer.prepared.log_prior)
    assert torch.equal(log_proba.argmax(1), exact.argmax(1))


def test_zero_padding_pads_in_the_encoders_dtype_under_autocast():
    """The first GPU crash: index_put of 16-bit features into an fp32 tensor."""
    trainer, train_set, references = trainer_for(digits_spec("zero_padding", precision="bf16"))
    rows, parts = trainer.epoch_batches(train_set)[0]
    assert parts[1] > 0 and parts[2] > 0  # both kinds of padding in this batch
    batch = methods_module.Batch(*trainer.speed.gatherer(train_set, 64)(rows), parts=parts)
    with trainer.speed.autocast():
        loss = trainer.method.loss(trainer.model, batch, trainer.prepared.log_prior, references)
        f = trainer.method._padded(trainer.model.f, batch.x, (batch.complete_rows, batch.y_missing_rows), 8)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert f.dtype == torch.bfloat16 and not f[batch.x_missing_rows].any() and f[batch.complete_rows].any()


def trainer_for(spec: TrainSpec) -> tuple[Trainer, object, object]:
    """A trainer as train() builds it, with the training set and reference inputs of its first epoch."""
    torch.manual_seed(spec.seed)
    device = torch.device("cpu")
    prepared = prepare_data(load_dataset(spec.dataset), spec, device)
    trainer = Trainer(spec, TrainingCallback(), prepared, device)
    train_set = trainer.method.prepare(prepared.train, trainer.callback, spec.seed)
    _, references = trainer.reference_inputs(train_set)
    return trainer, train_set, references


# --- host syncs -------------------------------------------------------------------------------


class HostReads(TorchDispatchMode):
    """Counts the operations that, on a GPU, make the host wait until the device has run what was
    queued: a scalar read (.item(), bool(), int(), float(): `_local_scalar_dense`), a result whose
    size depends on the data (boolean-mask indexing, nonzero, masked_select), a comparison read on
    the host (equal), and copies to the CPU, plus .tolist(), .numpy() and .cpu() (patched: on
    CPU tensors they dispatch nothing). The optimiser's own step counter is left out: Adam keeps
    it on the host, so reading it waits for nothing on a GPU."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads: list[str] = []
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            self._read(f"Tensor.{name}")
            return original(tensor, *args, **kwargs)

        return counted

    def _read(self, what: str) -> None:
        stack = traceback.extract_stack()
        if any("/torch/optim/" in frame.filename for frame in stack):
            return
        self.reads.append(what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.READS:
            self._read(name)
        elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None):
            self._read(f"{name} with a boolean mask")
        elif name in ("_to_copy", "copy_") and kwargs.get("device") is not None and kwargs["device"].type == "cpu" \
                and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
            self._read("copy to the CPU")
        return func(*args, **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_training_step_reads_nothing_back_from_the_device_but_its_logged_metrics(method, precision, monkeypatch):
    every = 4
    trainer, train_set, references = trainer_for(digits_spec(method, precision=precision, log_every_steps=every,
                                                              batch_size=32))
    trainer.train_epoch(train_set, references, epoch=1)  # first epoch: the gatherer and the parts are set up
    steps = trainer.batches_per_epoch(train_set)
    counter = HostReads(monkeypatch)
    with counter:
        trainer.train_epoch(train_set, references, epoch=2)
    monkeypatch.undo()
    reports = math.ceil(steps / every)
    assert steps > 3 * every
    assert len(counter.reads) <= reports, (len(counter.reads), reports, counter.reads[:12])
    assert counter.reads == ["Tensor.tolist"] * len(counter.reads)  # the step log's one read per report


def test_the_counter_sees_the_reads_a_step_used_to_make(monkeypatch):
    """The check above can fail: the step as it was (a boolean mask, .any(), .item()) counts."""
    counter = HostReads(monkeypatch)
    has_y = torch.tensor([True, False, True])
    x = torch.randn(3, 2)
    with counter:
        if has_y.any():
            x[has_y].sum().item()
    monkeypatch.undo()
    assert counter.reads == ["_local_scalar_dense", "index with a boolean mask", "_local_scalar_dense"]


# --- resume -----------------------------------------------------------------------------------


class Killed(Exception):
    pass


class Points(TrainingCallback):
    def __init__(self, kill_at_epoch: int | None = None):
        self.points, self.kill_at_epoch = {}, kill_at_epoch

    def on_step(self, epoch, step, metrics, progress):
        self.points.update({(epoch, step, name): value for name, value in metrics.items()
                            if name != "step/samples_per_second"})

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.kill_at_epoch:  # after epoch 2's checkpoint, before epoch 3's: a kill
            raise Killed()
        self.points.update({(epoch, None, name): value for name, value in metrics.items()})


def test_an_fp16_run_killed_after_epoch_2_resumes_with_its_loss_scale_and_the_same_points(tmp_path, monkeypatch):
    # Digits' gradients never overflow fp16 at the default scale, and the scale grows only after
    # 2,000 clean steps: here it grows every 3 steps, until gradients overflow and steps are
    # skipped, so where a resumed run restarts its scale shows in its points.
    import training.speed

    monkeypatch.setattr(training.speed, "grad_scaler", lambda precision, device: torch.amp.GradScaler(
        device.type, growth_interval=3) if precision == "fp16" else None)
    spec = digits_spec("mle", precision="fp16", epochs=4, log_every_steps=3)
    whole = Points()
    uninterrupted = train(spec, whole)
    assert uninterrupted.info["loss_scale"] != 2.0**16

    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        train(spec, Points(kill_at_epoch=3), checkpoint_path=checkpoint)
    second = Points()
    resumed = train(spec, second, checkpoint_path=checkpoint)
    assert resumed.info["resumed_from_epoch"] == 2
    assert resumed.info["loss_scale"] == uninterrupted.info["loss_scale"]
    later = {key: value for key, value in whole.points.items() if key[0] >= 3}
    assert second.points == later  # floats compared exactly
    assert resumed.test_predictions == uninterrupted.test_predictions


def test_a_checkpoint_written_before_the_scaler_and_generators_were_kept_still_resumes(tmp_path):
    from training.checkpoint import load_checkpoint, save_checkpoint

    spec = digits_spec("mle", precision="fp16", epochs=2)
    checkpoint = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        train(spec, Points(kill_at_epoch=2), checkpoint_path=checkpoint)
    trainer = Trainer(spec, TrainingCallback(), prepare_data(load_dataset("digits"), spec, torch.device("cpu")),
                      torch.device("cpu"))
    state = load_checkpoint(checkpoint, trainer.fingerprint)
    assert {"random", "scaler"} <= set(state)
    old = {k: v for k, v in state.items() if k not in ("random", "scaler", "format")}
    save_checkpoint(checkpoint, old)
    resumed = train(spec, checkpoint_path=checkpoint)
    assert resumed.info["resumed_from_epoch"] == 1 and resumed.epochs_completed == 2


def test_resume_restores_torchs_generators(tmp_path):
    """Dropout (VGG-16) draws from them: a resumed run draws what the uninterrupted one would."""
    spec = digits_spec("mle", epochs=1)
    trainer, train_set, _ = trainer_for(spec)
    trainer.checkpoint_path = tmp_path / "run.ckpt"
    trainer.save(1, train_set, None)
    expected = torch.rand(4)
    torch.manual_seed(12345)
    from training.checkpoint import load_checkpoint

    trainer.restore(load_checkpoint(trainer.checkpoint_path, trainer.fingerprint))
    assert torch.equal(torch.rand(4), expected)


def test_evaluate_missing_runs_g_over_the_y_bank_once_per_evaluation(monkeypatch):
    """Not once per chunk of test rows (with 2,000 test rows in chunks of 256 and a 4,096-row bank,
    g ran over 32,768 rows)."""
    import training.model

    monkeypatch.setattr(training.model, "MLP_EVAL_CHUNK", 50)  # the test set in several chunks
    trainer, train_set, _ = trainer_for(digits_spec("mle", evaluate_missing=True))
    rows = []
    trainer.model.g.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    trainer.evaluate(train_set)
    prepared = trainer.prepared
    assert len(prepared.test.z) > 3 * 50
    # g: the validation and test rows (eq. 4), and the bank once (eq. 5 for the test rows without y)
    assert sum(rows) == len(prepared.val.z) + len(prepared.test.z) + len(trainer.y_bank)
