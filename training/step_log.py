"""Per-step metrics and progress inside an epoch, for a callback's `on_step`.

Every `log_every_steps` optimiser steps (and at the epoch's last step) the loop reports, at its
global step: `step/train_loss` (the mean loss per sample over the steps since the last report),
the terms of that loss where the method has several (for `mle`: `step/loss_complete`, −log
Q(z|x,y) per complete sample, eq. 4; `step/loss_missing`, −log Q(z|x) per sample whose y is
missing, eq. 5), `step/lr` and `step/samples_per_second`; and the progress: step k of n, the
epoch, the throughput and the time left in the epoch and in the run.

Only reads what the loop computed: the training's numbers are the same with or without it. It is
also the only place the training loop reads numbers back from the device: the losses stay there,
summed (in float64, the sums Python floats made before), and one read every `log_every_steps`
steps brings all of them at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


class StepLog:
    def __init__(self, report: Callable[[int, int, dict[str, float], dict[str, Any]], None], *, epoch: int,
                 epochs: int, steps: int, every: int, optimiser: torch.optim.Optimizer,
                 terms: Callable[[], dict[str, tuple[torch.Tensor, int]]],
                 eval_seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.report, self.epoch, self.epochs, self.steps, self.every = report, epoch, epochs, steps, every
        self.optimiser, self.terms, self.eval_seconds, self.clock = optimiser, terms, eval_seconds, clock
        self.epoch_started = self.window_started = clock()
        self.epoch_loss: torch.Tensor | None = None  # Σ loss × batch size over the epoch, on the device
        self.epoch_loss_sum: float | None = None  # its value as read at the last report (the epoch's last step)
        self._reset_window()

    def _reset_window(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.samples = 0
        self.term_sums: dict[str, tuple[torch.Tensor, int]] = {}

    def after_step(self, step: int, loss: torch.Tensor, batch_size: int) -> None:
        """`step`: 1-based within the epoch; `loss`: the batch's mean loss per sample."""
        weighted = loss.detach().double() * batch_size
        self.epoch_loss = weighted if self.epoch_loss is None else self.epoch_loss + weighted
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.samples += batch_size
        for name, (total, count) in self.terms().items():
            sums = self.term_sums.get(name)
            self.term_sums[name] = (total, count) if sums is None else (sums[0] + total, sums[1] + count)
        if step % self.every == 0 or step == self.steps:
            self._emit(step)

    def _emit(self, step: int) -> None:
        now = self.clock()
        window = max(now - self.window_started, 1e-9)
        per_step = (now - self.epoch_started) / step  # the epoch's average so far: steadier than the window
        samples_per_second = self.samples / window
        names = list(self.term_sums)
        # One read for every number of the report: each .item() would wait for the GPU on its own.
        epoch_loss, loss_sum, *totals = torch.stack(
            [self.epoch_loss, self.loss_sum, *(self.term_sums[name][0].double() for name in names)]).tolist()
        self.epoch_loss_sum = epoch_loss
        metrics = {"step/train_loss": loss_sum / self.samples}
        for name, total in zip(names, totals):
            count = int(self.term_sums[name][1])
            if count > 0:
                metrics[f"step/{name}"] = total / count
        metrics["step/lr"] = float(self.optimiser.param_groups[0]["lr"])
        metrics["step/samples_per_second"] = samples_per_second
        eta = (self.steps - step) * per_step
        evaluation = self.eval_seconds or 0.0  # unknown before the first evaluation
        run_eta = eta + evaluation + (self.epochs - self.epoch) * (self.steps * per_step + evaluation)
        global_step = (self.epoch - 1) * self.steps + step
        progress = {"epoch": self.epoch, "epochs": self.epochs, "step": step, "steps": self.steps,
                    "global_step": global_step, "samples_per_second": round(samples_per_second, 2),
                    "eta_seconds": round(eta, 2), "run_eta_seconds": round(run_eta, 2)}
        self.report(self.epoch, global_step, metrics, progress)
        self.window_started = now
        self._reset_window()
