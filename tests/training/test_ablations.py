"""The ablations of mle (spec options mle_stop_reference_gradient, mle_freeze_class_offset,
label_prior): off, not one operation differs from the loss as it was before they existed —
same loss and same gradients to the last bit; on, each changes what it says and nothing else."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from training.checkpoint import spec_fingerprint
from training.likelihood import log_label_prior, log_posterior, marginal_scores, pair_scores
from training.methods import Batch, ReferenceInputs, _summed_nll, make_method
from training.model import two_view_model
from training.prepare import ModalityInput
from training.spec import ABLATION_DEFAULTS, TrainSpec
from training.train import TrainingCallback, train

K, D = 4, 6


def loss_before_the_ablations(model, batch, log_prior, references):
    """MaximumLikelihood.loss as it was before the ablation options, verbatim."""
    H = model.label_embeddings()
    complete, z = batch.complete, batch.z
    f_complete = model.f(batch.x[complete])
    g_complete = model.g(batch.y[complete])
    total = _summed_nll(log_posterior(pair_scores(f_complete, g_complete, H, model.fusion), log_prior), z[complete])
    y_missing = batch.has_x & ~batch.has_y
    if y_missing.any():
        g_reference = g_complete if references.y is None else model.g(references.y)
        scores = marginal_scores(model.f(batch.x[y_missing]), g_reference, H, model.fusion, missing="y")
        total = total + _summed_nll(log_posterior(scores, log_prior), z[y_missing])
    x_missing = ~batch.has_x & batch.has_y
    if x_missing.any():
        f_reference = f_complete if references.x is None else model.f(references.x)
        scores = marginal_scores(model.g(batch.y[x_missing]), f_reference, H, model.fusion, missing="x")
        total = total + _summed_nll(log_posterior(scores, log_prior), z[x_missing])
    return total / len(z)


def spec(**fields) -> TrainSpec:
    return TrainSpec(**{"dataset": "synthetic", "method": "mle", "missing_modality": "y", "missing_rate": 0.7,
                        "feature_dim": 5, "hidden_dim": 8, **fields})


def setting(fusion: str, seed: int = 0):
    torch.manual_seed(seed)
    model = two_view_model(spec(fusion=fusion), ModalityInput((D,)), ModalityInput((D,)), K)
    generator = torch.Generator().manual_seed(seed)
    n = 24
    has_y = torch.arange(n) % 3 == 0  # a third complete
    has_x = ~(torch.arange(n) % 7 == 5) | has_y  # a few lost x instead
    batch = Batch(torch.randn(n, D, generator=generator), torch.randn(n, D, generator=generator),
                  torch.randint(0, K, (n,), generator=generator), has_x, has_y)
    references = ReferenceInputs(y=torch.randn(10, D, generator=generator), x=torch.randn(10, D, generator=generator))
    log_prior = log_label_prior(batch.z, K)
    return model, batch, references, log_prior


def loss_and_gradients(loss_fn, model, *args):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, *args)
    loss.backward()
    return loss.detach().clone(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fusion", ["add", "concat", "outer"])
@pytest.mark.parametrize("all_complete", [True, False])
def test_off_the_loss_and_its_gradients_are_bitwise_as_before(fusion, all_complete):
    model, batch, references, log_prior = setting(fusion)
    references = references if all_complete else ReferenceInputs()
    method = make_method(spec(fusion=fusion))
    before = loss_and_gradients(loss_before_the_ablations, model, batch, log_prior, references)
    now = loss_and_gradients(method.loss, model, batch, log_prior, references)
    assert torch.equal(before[0], now[0])
    assert before[1].keys() == now[1].keys()
    for name in before[1]:
        assert torch.equal(before[1][name], now[1][name]), name


class Points(TrainingCallback):
    def __init__(self):
        self.points = []

    def on_epoch_end(self, epoch, metrics):
        self.points.append((epoch, metrics))


def test_off_a_run_gives_the_same_numbers_to_the_last_digit():
    explicit, default = Points(), Points()
    fields = {"dataset": "digits", "missing_modality": "bottom", "epochs": 2, "seed": 3}
    first = train(spec(**fields, mle_stop_reference_gradient=False, mle_freeze_class_offset=False,
                       label_prior="empirical"), explicit)
    second = train(spec(**fields), default)
    assert explicit.points == default.points  # floats compared exactly
    assert first.test_predictions == second.test_predictions and first.confusion_matrix == second.confusion_matrix


@pytest.mark.parametrize("fusion", ["add", "concat"])
def test_each_ablation_changes_what_it_says(fusion):
    model, batch, references, log_prior = setting(fusion)
    base_loss, base = loss_and_gradients(make_method(spec(fusion=fusion)).loss, model, batch, log_prior, references)
    g_params = [name for name in base if name.startswith("g.")]
    f_params = [name for name in base if name.startswith("f.")]
    assert g_params and f_params

    # g(y') detached: the same loss; f's gradient the same, g's no longer carries eq. 5's part.
    loss, grads = loss_and_gradients(make_method(spec(fusion=fusion, mle_stop_reference_gradient=True)).loss,
                                     model, batch, log_prior, references)
    assert torch.equal(loss, base_loss)
    assert all(torch.allclose(grads[n], base[n], atol=1e-7) for n in f_params)
    assert any(not torch.allclose(grads[n], base[n]) for n in g_params)

    # c_z frozen: the same loss; g learns only from eq. 4 and h no longer from c_z.
    loss, frozen = loss_and_gradients(make_method(spec(fusion=fusion, mle_freeze_class_offset=True)).loss,
                                      model, batch, log_prior, references)
    assert torch.equal(loss, base_loss)
    assert any(not torch.allclose(frozen[n], base[n]) for n in g_params)
    assert not torch.allclose(frozen["h.weight"], base["h.weight"])

    # A uniform R_Z: a different loss.
    uniform = log_label_prior(batch.z, K, "uniform")
    assert torch.allclose(uniform.exp(), torch.full((K,), 1 / K))
    loss, _ = loss_and_gradients(make_method(spec(fusion=fusion, label_prior="uniform")).loss,
                                 model, batch, uniform, references)
    assert not torch.equal(loss, base_loss)


def test_the_options_are_refused_where_they_mean_nothing():
    with pytest.raises(ValidationError, match="an ablation of mle"):
        spec(method="zero_padding", mle_stop_reference_gradient=True)
    with pytest.raises(ValidationError, match="no class offset"):
        spec(fusion="outer", mle_freeze_class_offset=True)
    assert spec(fusion="outer", mle_stop_reference_gradient=True).mle_stop_reference_gradient
    assert spec(method="zero_padding", label_prior="uniform").label_prior == "uniform"


def test_a_default_spec_keeps_its_checkpoint_fingerprint():
    dumped = spec().model_dump()
    as_before = {k: v for k, v in dumped.items() if k not in ABLATION_DEFAULTS}
    assert spec_fingerprint(dumped) == spec_fingerprint(as_before)
    assert spec_fingerprint(spec(label_prior="uniform").model_dump()) != spec_fingerprint(dumped)
