"""What exploiting the incomplete samples costs per training step (issue: eq. 5 cost).

Setting: batch 256 with 90% of its samples missing y, features mode (x and y are 512-d
feature vectors, MLP encoders 512 → 256 → 256 → k), k = 128, K = 6. Reported, per fusion:

- mle step / lower_bound step, with S = the complete samples of the batch, and with S =
  1,000 complete samples (g runs over all of S, forward and backward, every step);
- efficient eq. 5 (separable K-vector for add/concat, one einsum for outer) / brute force
  (φ materialised for every (sample, y') pair), forward + backward of the loss.

Times are medians from torch.utils.benchmark on this machine's CPU (or the GPU with --device cuda).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from training.fusion import FUSIONS
from training.likelihood import log_posterior, marginal_scores, marginal_scores_bruteforce
from training.methods import Batch, LowerBound, MaximumLikelihood, ReferenceInputs
from training.model import mlp_two_view_model
from training.spec import TrainSpec

from .rows import Row, print_table

BATCH, K, FEATURE_DIM, INPUT_DIM, HIDDEN, MISSING_RATE, REFERENCE = 256, 6, 128, 512, 256, 0.9, 1000
TARGET_SAME_S = {"add": 1.5, "concat": 1.5, "outer": 3.0}


def median_seconds(fn, min_run_time: float) -> float:
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def step_time(method, model, batch, log_prior, references, min_run_time) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = method.loss(model, batch, log_prior, references)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step()  # warm-up
    return median_seconds(step, min_run_time)


def measure(device: torch.device, min_run_time: float) -> list[Row]:
    torch.manual_seed(0)
    rows: list[Row] = []
    n_complete = int(round(BATCH * (1 - MISSING_RATE)))
    make = lambda n: torch.randn(n, INPUT_DIM, device=device)
    z = torch.randint(0, K, (BATCH,), device=device)
    has_y = torch.zeros(BATCH, dtype=torch.bool, device=device)
    has_y[:n_complete] = True
    mixed = Batch(make(BATCH), make(BATCH), z, torch.ones_like(has_y), has_y)
    complete = Batch(make(BATCH), make(BATCH), z, torch.ones_like(has_y), torch.ones_like(has_y))
    log_prior = torch.full((K,), -torch.log(torch.tensor(float(K))), device=device)
    reference_y = make(REFERENCE)

    for fusion in FUSIONS:
        spec = TrainSpec(dataset="digits", method="mle", fusion=fusion, missing_modality="bottom", missing_rate=0.9)
        model = mlp_two_view_model(INPUT_DIM, INPUT_DIM, HIDDEN, FEATURE_DIM, K, fusion).to(device)
        lower = step_time(LowerBound(spec), model, complete, log_prior, ReferenceInputs(), min_run_time)
        mle_batch = step_time(MaximumLikelihood(spec), model, mixed, log_prior, ReferenceInputs(), min_run_time)
        mle_all = step_time(MaximumLikelihood(spec), model, mixed, log_prior, ReferenceInputs(y=reference_y),
                            min_run_time)
        rows.append(Row.compared(f"mle/lower_bound step, {fusion}, S=batch ({n_complete})", mle_batch * 1e3,
                                 lower * 1e3, "ms", TARGET_SAME_S[fusion]))
        rows.append(Row.compared(f"mle/lower_bound step, {fusion}, S={REFERENCE}", mle_all * 1e3, lower * 1e3, "ms",
                                 note="" if fusion != "add" else
                                 f"g runs forward and backward over all {REFERENCE} reference samples every step"))

    n_missing = BATCH - n_complete
    for fusion in FUSIONS:
        for size in (n_complete, REFERENCE):
            f = torch.randn(n_missing, FEATURE_DIM, device=device, requires_grad=True)
            g = torch.randn(size, FEATURE_DIM, device=device, requires_grad=True)
            dim = {"add": FEATURE_DIM, "concat": 2 * FEATURE_DIM, "outer": FEATURE_DIM**2}[fusion]
            H = (0.01 * torch.randn(K, dim, device=device)).requires_grad_()
            target = torch.randint(0, K, (n_missing,), device=device)

            def loss_of(scores_fn):
                def run():
                    scores = scores_fn(f, g, H, fusion)
                    loss = torch.nn.functional.nll_loss(log_posterior(scores, log_prior), target)
                    loss.backward()
                return run

            efficient = median_seconds(loss_of(marginal_scores), min_run_time)
            brute_bytes = n_missing * size * dim * 4
            what = f"eq. 5 efficient/brute force, {fusion}, S={size}"
            if brute_bytes > 2e9:
                rows.append(Row(what, efficient * 1e3, "ms", None, None,
                                note=f"brute force would materialise φ for every pair: {brute_bytes / 1e9:.1f} GB"))
                continue
            brute = median_seconds(loss_of(marginal_scores_bruteforce), min_run_time)
            rows.append(Row.compared(what, efficient * 1e3, brute * 1e3, "ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per figure")
    args = parser.parse_args()
    print(f"eq. 5 cost on {args.device}, {torch.get_num_threads()} threads")
    print_table(measure(torch.device(args.device), args.min_run_time))


if __name__ == "__main__":
    main()
