"""Eq. 4 and eq. 5 as trained, checked against a brute-force computation written straight from
the paper: materialise φ(f(x), g(y')) for every (sample, y') pair and sum in probability space."""

from __future__ import annotations

import itertools

import pytest
import torch

from training.fusion import FUSIONS, fused_dim
from training.likelihood import (
    label_embeddings,
    log_label_prior,
    log_posterior,
    marginal_scores,
    marginal_scores_bruteforce,
    pair_scores,
)

K, k, B, S = 6, 5, 7, 9


def phi_of(f: torch.Tensor, g: torch.Tensor, fusion: str) -> torch.Tensor:
    """φ for one pair of vectors, exactly as in the paper's Fig. 3."""
    if fusion == "add":
        return f + g
    if fusion == "concat":
        return torch.cat([f, g])
    return torch.outer(f, g).reshape(-1)


def bruteforce_q_given_x(f, g_ref, W, b, prior, fusion):
    """Q(z|x) of eq. 5 by loops, in probability space: R_Y uniform over the reference set."""
    rows = []
    for i in range(len(f)):
        joint = torch.stack([
            prior[z] * sum(torch.exp(phi_of(f[i], g_ref[j], fusion) @ (W[:, z] + b)) / len(g_ref)
                           for j in range(len(g_ref)))
            for z in range(K)
        ])
        rows.append(joint / joint.sum())
    return torch.stack(rows)


def bruteforce_q_given_xy(f, g, W, b, prior, fusion):
    """Q(z|x,y) of eq. 4 by loops, in probability space."""
    rows = []
    for i in range(len(f)):
        joint = torch.stack([prior[z] * torch.exp(phi_of(f[i], g[i], fusion) @ (W[:, z] + b)) for z in range(K)])
        rows.append(joint / joint.sum())
    return torch.stack(rows)


def random_problem(fusion: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)
    head = torch.nn.Linear(K, fused_dim(k, fusion), dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(rand(*head.weight.shape) * 0.5)
        head.bias.copy_(rand(*head.bias.shape) * 0.5)  # a clearly non-zero bias: it matters in eq. 5
    assert head.bias.abs().min() > 0
    f = (rand(B, k) * 0.7).requires_grad_()
    g_ref = (rand(S, k) * 0.7).requires_grad_()
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 5, 0, 2])
    return head, f, g_ref, labels


@pytest.mark.parametrize("fusion,seed", list(itertools.product(FUSIONS, [0, 1])))
def test_eq5_matches_bruteforce_values_and_gradients(fusion, seed):
    head, f, g_ref, labels = random_problem(fusion, seed)
    log_prior = log_label_prior(labels, K).to(torch.float64)
    z = torch.arange(B) % K

    efficient = log_posterior(marginal_scores(f, g_ref, label_embeddings(head), fusion), log_prior)
    loss = -efficient[torch.arange(B), z].sum()
    grads = torch.autograd.grad(loss, [f, g_ref, head.weight, head.bias])

    q = bruteforce_q_given_x(f, g_ref, head.weight, head.bias, log_prior.exp(), fusion)
    reference_loss = -torch.log(q[torch.arange(B), z]).sum()
    reference_grads = torch.autograd.grad(reference_loss, [f, g_ref, head.weight, head.bias])

    torch.testing.assert_close(efficient.exp(), q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, reference_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def bruteforce_q_given_y(g, f_ref, W, b, prior, fusion):
    """The mirror of eq. 5 for a sample that lost x: marginalise x over the reference set."""
    rows = []
    for i in range(len(g)):
        joint = torch.stack([
            prior[z] * sum(torch.exp(phi_of(f_ref[j], g[i], fusion) @ (W[:, z] + b)) / len(f_ref)
                           for j in range(len(f_ref)))
            for z in range(K)
        ])
        rows.append(joint / joint.sum())
    return torch.stack(rows)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_mirrored_eq5_for_missing_x_matches_bruteforce(fusion):
    head, g, f_ref, labels = random_problem(fusion, 7)
    log_prior = log_label_prior(labels, K).to(torch.float64)
    z = torch.arange(B) % K
    efficient = log_posterior(marginal_scores(g, f_ref, label_embeddings(head), fusion, missing="x"), log_prior)
    grads = torch.autograd.grad(-efficient[torch.arange(B), z].sum(), [g, f_ref, head.weight, head.bias])
    q = bruteforce_q_given_y(g, f_ref, head.weight, head.bias, log_prior.exp(), fusion)
    reference_grads = torch.autograd.grad(-torch.log(q[torch.arange(B), z]).sum(), [g, f_ref, head.weight, head.bias])
    torch.testing.assert_close(efficient.exp(), q, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, reference_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    library_bruteforce = marginal_scores_bruteforce(g, f_ref, label_embeddings(head), fusion, missing="x")
    torch.testing.assert_close(marginal_scores(g, f_ref, label_embeddings(head), fusion, missing="x"),
                               library_bruteforce)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_eq4_matches_bruteforce(fusion):
    head, f, g_ref, labels = random_problem(fusion, 3)
    g = g_ref[:B] if S >= B else g_ref.repeat(2, 1)[:B]
    log_prior = log_label_prior(labels, K).to(torch.float64)
    efficient = log_posterior(pair_scores(f, g, label_embeddings(head), fusion), log_prior)
    q = bruteforce_q_given_xy(f, g, head.weight, head.bias, log_prior.exp(), fusion)
    torch.testing.assert_close(efficient.exp(), q, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_library_bruteforce_agrees_with_efficient_form(fusion):
    head, f, g_ref, _ = random_problem(fusion, 4)
    H = label_embeddings(head)
    torch.testing.assert_close(marginal_scores(f, g_ref, H, fusion), marginal_scores_bruteforce(f, g_ref, H, fusion))


def test_bias_matters_in_eq5_but_not_in_eq4():
    """The head's bias is constant over z: it cancels in eq. 4 but weights the y' in eq. 5."""
    head, f, g_ref, labels = random_problem("add", 5)
    log_prior = log_label_prior(labels, K).to(torch.float64)
    H = label_embeddings(head)
    H_without_bias = head.weight.T
    eq4 = lambda H_: log_posterior(pair_scores(f, g_ref[:B], H_, "add"), log_prior)
    eq5 = lambda H_: log_posterior(marginal_scores(f, g_ref, H_, "add"), log_prior)
    torch.testing.assert_close(eq4(H), eq4(H_without_bias))
    assert not torch.allclose(eq5(H), eq5(H_without_bias), atol=1e-4)


def test_eq5_with_one_reference_sample_is_eq4():
    """With S = {y}, marginalising over S is conditioning on y."""
    for fusion in FUSIONS:
        head, f, g_ref, labels = random_problem(fusion, 6)
        H = label_embeddings(head)
        one = g_ref[:1]
        torch.testing.assert_close(marginal_scores(f, one, H, fusion), pair_scores(f, one.expand(B, -1), H, fusion))


def test_label_prior_is_empirical_frequency():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    torch.testing.assert_close(log_label_prior(labels, 4).exp(), torch.tensor([2 / 6, 1 / 6, 3 / 6, 0.0]))
