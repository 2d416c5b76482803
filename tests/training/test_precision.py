"""Mixed precision keeps the likelihood exact: eq. 4/5 are computed in fp32 under autocast, and
the spec's new fields change nothing at their defaults."""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import spec_fingerprint
from training.likelihood import log_posterior, marginal_scores, pair_scores
from training.methods import Batch, MaximumLikelihood, ReferenceInputs
from training.precision import resolve_precision
from training.prepare import ModalityInput
from training.spec import TrainSpec

# bf16 keeps 8 bits of mantissa: each encoder layer rounds its inputs to ~0.4%, so a three-layer
# MLP's features (and the loss made of them) move by about 1%. The stated tolerance: 3% of the loss.
LOSS_TOLERANCE = 0.03


def spec(fusion: str) -> TrainSpec:
    return TrainSpec(dataset="digits", method="mle", fusion=fusion, missing_modality="bottom", missing_rate=0.5,
                     feature_dim=16, hidden_dim=32)


def batch(n: int = 64) -> Batch:
    generator = torch.Generator().manual_seed(0)
    has_y = torch.rand(n, generator=generator) < 0.5
    has_y[:2] = True  # complete samples for the batch's reference set
    return Batch(torch.randn(n, 32, generator=generator), torch.randn(n, 32, generator=generator) * has_y[:, None],
                 torch.arange(n) % 10, torch.ones(n, dtype=torch.bool), has_y)


@pytest.mark.parametrize("fusion", ["add", "concat", "outer"])
def test_fp32_and_bf16_autocast_losses_agree_on_cpu(fusion):
    torch.manual_seed(0)
    method = MaximumLikelihood(spec(fusion))
    model = method.build_model(ModalityInput((32,)), ModalityInput((32,)), 10)
    log_prior = torch.log(torch.full((10,), 0.1))
    data = batch()
    exact = method.loss(model, data, log_prior, ReferenceInputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method.loss(model, data, log_prior, ReferenceInputs())
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - exact.item()) <= LOSS_TOLERANCE * exact.item()
    mixed.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("fusion", ["add", "concat", "outer"])
def test_the_likelihood_itself_adds_no_rounding_under_autocast(fusion):
    """Given the same (16-bit) features, eq. 4 and eq. 5 under autocast are bit for bit the fp32
    computation on those features: all of the difference comes from the encoders."""
    generator = torch.Generator().manual_seed(1)
    k = 8
    f, g = torch.randn(16, k, generator=generator).bfloat16(), torch.randn(5, k, generator=generator).bfloat16()
    H = torch.randn(10, {"add": k, "concat": 2 * k, "outer": k * k}[fusion], generator=generator)
    prior = torch.log(torch.full((10,), 0.1))
    expected5 = log_posterior(marginal_scores(f.float(), g.float(), H, fusion), prior)
    expected4 = log_posterior(pair_scores(f.float()[:5], g.float(), H, fusion), prior)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eq5 = log_posterior(marginal_scores(f, g, H, fusion), prior)
        eq4 = log_posterior(pair_scores(f[:5], g, H, fusion), prior)
    assert eq5.dtype == eq4.dtype == torch.float32
    assert torch.equal(eq5, expected5) and torch.equal(eq4, expected4)


def test_precision_auto_is_fp32_on_cpu_and_for_mlps():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "small_cnn") == "fp32"
    assert resolve_precision("auto", cpu, "mlp") == "fp32"
    assert resolve_precision("bf16", cpu, "mlp") == "bf16"


def test_new_spec_fields_at_their_defaults_keep_old_checkpoints():
    fields = spec("add").model_dump()
    assert fields["precision"] == "auto" and fields["compile"] is False
    old = {k: v for k, v in fields.items() if k not in ("precision", "compile")}
    assert spec_fingerprint(fields) == spec_fingerprint(old)
    assert spec_fingerprint({**fields, "compile": True}) == spec_fingerprint(old)  # compiling trains the same model
    assert spec_fingerprint({**fields, "precision": "bf16"}) != spec_fingerprint(old)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.5, precision="fp8")
