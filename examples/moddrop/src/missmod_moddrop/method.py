"""ModDrop's implementation (imported by workers only: torch)."""

import torch
import torch.nn.functional as F

from training.likelihood import log_posterior, pair_scores
from training.methods import Method


class ModDrop(Method):
    def loss(self, model, batch, log_prior, references):
        has_x = batch.has_x.unsqueeze(1).to(torch.float32)
        has_y = batch.has_y.unsqueeze(1)
        # Complete samples lose y with probability drop_rate (torch's generator: seeded by the run,
        # and saved in its checkpoints, so a resumed run draws the same masks).
        kept = has_y & (torch.rand(has_y.shape, device=has_y.device) >= self.options.drop_rate)
        scale = 1.0 / (1.0 - self.options.drop_rate) if self.options.rescale else 1.0
        f = model.f(batch.x) * has_x  # rows without x hold zeros; their features are zeroed too
        g = model.g(batch.y) * kept.to(torch.float32) * scale
        scores = pair_scores(f, g, model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)

    @torch.no_grad()
    def predict_log_proba_without_y(self, model, x, log_prior, y_bank):
        f = model.f(x)
        scores = pair_scores(f, torch.zeros_like(f), model.label_embeddings(), model.fusion)
        return log_posterior(scores, log_prior)
