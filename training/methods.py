"""The methods compared (paper §2.2 and §3.3). All train the same `TwoViewModel` (encoders f,
g and label head h) with the same optimiser and number of steps; they differ in which
samples they use, the loss, and (hgr) the prediction rule.

Vocabulary: a training batch holds complete samples (x and y), samples whose y is missing
(D_XZ) and, when both modalities are partly missing, samples whose x is missing (D_YZ).
On complete test data every method but hgr predicts with eq. 4 (paper §3.2). With the
missing modality removed at test time (`evaluate_missing`), each predicts as its docstring says.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .batches import device_index
from .fusion import fuse
from .likelihood import in_fp32, log_posterior, marginal_scores, pair_scores
from .model import MLPImputer, TwoViewModel, two_view_model
from .plugins import MethodDescription
from .prepare import ModalityInput, TrainingSet
from .spec import METHODS, TrainSpec

EVAL_CHUNK = 4096


@dataclass
class Batch:
    """A training batch. Its rows come in the order complete | y missing | x missing, and `parts`
    holds the size of each part, known on the host (the batch sampler drew them), so a method
    takes a part by slicing. Taking it with a mask instead (`x[has_y]`, `has_y.any()`) reads the
    mask back from the device: on a GPU each such read waits until every queued kernel has run,
    several times a step. Built without `parts` (tests, benchmarks, scripts), the batch reads its
    masks once and puts its rows in that order."""

    x: torch.Tensor
    y: torch.Tensor  # rows where has_y is False hold zeros and are never read (same for x)
    z: torch.Tensor
    has_x: torch.Tensor
    has_y: torch.Tensor
    # How many rows are complete, lack y, lack x (rows after these, if any, have neither and are
    # in no part: the batch sampler never draws such rows, a test may).
    parts: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.parts is None:
            self._order_rows_by_part()

    def _order_rows_by_part(self) -> None:
        has_x, has_y = self.has_x.cpu(), self.has_y.cpu()
        kinds = (has_x & has_y, has_x & ~has_y, ~has_x & has_y, ~has_x & ~has_y)  # the last: in no part
        order = torch.cat([torch.nonzero(kind).flatten() for kind in kinds])
        self.parts = tuple(int(kind.sum()) for kind in kinds[:3])
        if not torch.equal(order, torch.arange(len(order))):
            order = order.to(self.x.device)
            self.x, self.y, self.z, self.has_x, self.has_y = (t[order] for t in (self.x, self.y, self.z, self.has_x,
                                                                                  self.has_y))

    @property
    def complete(self) -> torch.Tensor:
        return self.has_x & self.has_y

    @property
    def complete_rows(self) -> slice:
        return slice(0, self.parts[0])

    @property
    def y_missing_rows(self) -> slice:
        complete, y_missing, _ = self.parts
        return slice(complete, complete + y_missing)

    @property
    def x_missing_rows(self) -> slice:
        complete, y_missing, x_missing = self.parts
        return slice(complete + y_missing, complete + y_missing + x_missing)


@dataclass
class ReferenceInputs:
    """Inputs of the reference set S of eq. 5: y (and x) of every complete training sample.
    None: S is the complete samples of the batch."""

    y: torch.Tensor | None = None
    x: torch.Tensor | None = None


class YBank:
    """The training y's that test-time eq. 5 marginalises over (`evaluate_missing`), and their g
    features, computed once per evaluation by the first method that asks (not again for every
    chunk of test rows: with 2,000 test rows in chunks of 256 and a 4,096-row bank, g ran over
    32,768 rows instead of 4,096)."""

    def __init__(self, inputs: torch.Tensor | None):
        self.inputs = inputs
        self._g: torch.Tensor | None = None

    @classmethod
    def of_features(cls, g: torch.Tensor) -> "YBank":
        """A bank whose g features were computed already (a model bundle stores them: training/bundle.py)."""
        bank = cls(None)
        bank._g = g
        return bank

    def g_features(self, model: TwoViewModel) -> torch.Tensor:
        if self._g is None:
            self._g = _features(model.g, self.inputs)
        return self._g


def _features(encoder: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Encoder output over many inputs, in chunks (smaller for image encoders), without gradients."""
    chunk = getattr(encoder, "eval_chunk", EVAL_CHUNK)
    return torch.cat([encoder(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk)])


class Method:
    """The torch half of the method protocol (docs/methods.md): a subclass is what a
    `MethodDescription.implementation` names. One instance trains one run."""

    name: ClassVar[str]
    # Whether the method's batches include samples with a missing modality.
    trains_on_missing: ClassVar[bool] = True
    # Whether the loss marginalises a missing modality over a reference set S (eq. 5).
    uses_reference_set: ClassVar[bool] = False

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        if getattr(self, "name", None) is None:  # a plugin's class may leave it to its description
            self.name = spec.method
        # The run's options, an instance of the description's options model (defaults filled in).
        self.options = METHODS[spec.method].options.model_validate(spec.method_options)
        # The terms of the last batch's loss, for the per-step metrics: name → (summed −log Q over
        # the term's samples, a detached tensor read only when logged; how many samples, known on
        # the host), so recording them costs no device sync. Methods with one term leave it empty.
        self.last_terms: dict[str, tuple[torch.Tensor, int]] = {}

    def build_model(self, x: ModalityInput, y: ModalityInput, n_classes: int) -> TwoViewModel:
        return two_view_model(self.spec, x, y, n_classes)

    def prepare(self, train: TrainingSet, callback: Any, seed: int) -> TrainingSet | None:
        """A stage before the classifier's epochs (the autoencoders' imputation). None: cancelled."""
        return train

    def loss(self, model: TwoViewModel, batch: Batch, log_prior: torch.Tensor,
             references: ReferenceInputs) -> torch.Tensor:
        raise NotImplementedError

    def fit_statistics(self, model: TwoViewModel, train: TrainingSet) -> None:
        """Called before each evaluation, for methods whose prediction needs training statistics."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of the method beyond the model (e.g. a fitted imputer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        pass

    def prediction_state(self) -> dict[str, Any]:
        """What the method needs besides the model to predict (a model bundle keeps it): by
        default what a checkpoint keeps; methods with statistics fitted before each evaluation
        (hgr) add them."""
        return self.state_dict()

    def load_prediction_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.load_state_dict(state, device)

    @torch.no_grad()
    def predict_log_proba(self, model: TwoViewModel, x: torch.Tensor, y: torch.Tensor,
                          log_prior: torch.Tensor) -> torch.Tensor:
        """log Q(z|x,y), eq. 4."""
        scores = pair_scores(model.f(x), model.g(y), model.label_embeddings(), model.fusion)
        return log_posterior(scores, log_prior)

    @torch.no_grad()
    def predict_log_proba_without_y(self, model: TwoViewModel, x: torch.Tensor, log_prior: torch.Tensor,
                                    y_bank: YBank) -> torch.Tensor:
        """log Q(z|x) when y is missing at test time: eq. 5 with S = a bank of training y's.
        For any model trained through eq. 4 this is the Q(z|x) its eq. 3 implies."""
        g_bank = y_bank.g_features(model)
        return log_posterior(marginal_scores(model.f(x), g_bank, model.label_embeddings(), model.fusion), log_prior)


def _summed_nll(log_q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_q, z, reduction="sum")


class MaximumLikelihood(Method):
    """`mle` — the paper's method (§2.2, eq. 2).

    Loss per batch: [−Σ_{complete} log Q(z|x,y) (eq. 4) − Σ_{y missing} log Q(z|x) (eq. 5)] / B,
    an unbiased estimate of eq. 2 divided by the training-set size. In eq. 5 the sum over y'
    runs over the reference set S: every complete training sample (the paper's "all possible
    values of y on D_XYZ") or the complete samples of the batch (the batch sampler guarantees
    at least one). Gradients flow through g(y') for y' ∈ S, as in end-to-end training of eq. 2.
    When both modalities are partly missing, samples that lost x add −log Q(z|y), eq. 5 with
    the roles of x and y swapped (S: the x of the complete samples).
    At test time without y: eq. 5 against a bank of training y's (the paper's own Q(z|x)).

    Two ablations (spec options, both off by default, and then not a single operation differs):
    `mle_stop_reference_gradient` detaches g(y') for y' ∈ S, so eq. 5 trains f and h but not g;
    `mle_freeze_class_offset` (add, concat) lets no gradient at all through the class offset
    c_z = LSE_{y'∈S} g(y')ᵀh_g(z) that eq. 5 adds to the x-only logits. Samples that lost x get
    the mirror image (f(x') detached; their offset frozen). docs/results.md says what they show.
    """

    name = "mle"
    uses_reference_set = True

    def loss(self, model, batch, log_prior, references):
        H = model.label_embeddings()
        z, (n_complete, n_y_missing, n_x_missing) = batch.z, batch.parts
        complete, y_missing, x_missing = batch.complete_rows, batch.y_missing_rows, batch.x_missing_rows
        stop_reference, freeze = self.spec.mle_stop_reference_gradient, self.spec.mle_freeze_class_offset
        f_complete = model.f(batch.x[complete])
        g_complete = model.g(batch.y[complete])
        total = _summed_nll(log_posterior(pair_scores(f_complete, g_complete, H, model.fusion), log_prior), z[complete])
        self.last_terms = {"loss_complete": (total.detach(), n_complete)}  # eq. 4
        if n_y_missing:
            g_reference = g_complete if references.y is None else model.g(references.y)
            if stop_reference:
                g_reference = g_reference.detach()
            scores = marginal_scores(model.f(batch.x[y_missing]), g_reference, H, model.fusion, missing="y",
                                     freeze_class_offset=freeze)
            term = _summed_nll(log_posterior(scores, log_prior), z[y_missing])
            self.last_terms["loss_missing"] = (term.detach(), n_y_missing)  # eq. 5
            total = total + term
        if n_x_missing:
            f_reference = f_complete if references.x is None else model.f(references.x)
            if stop_reference:
                f_reference = f_reference.detach()
            scores = marginal_scores(model.g(batch.y[x_missing]), f_reference, H, model.fusion, missing="x",
                                     freeze_class_offset=freeze)
            term = _summed_nll(log_posterior(scores, log_prior), z[x_missing])
            self.last_terms["loss_missing_x"] = (term.detach(), n_x_missing)  # eq. 5, x and y swapped
            total = total + term
        return total / len(z)


class LowerBound(Method):
    """`lower_bound` — discard every sample with a missing modality (§3.3, "Lower Bound") and
    train eq. 4 on D_XYZ only; the paper's ablation of `mle`. Same network and same number of
    optimiser steps per epoch as `mle` (batches are drawn from the complete samples only), so
    the gap to `mle` is what the incomplete samples are worth, not a difference in training
    length. The label prior R_Z is that of all training labels, as for `mle`.
    At test time without y: eq. 5 against a bank of training y's (the model's implied Q(z|x))."""

    name = "lower_bound"
    trains_on_missing = False

    def loss(self, model, batch, log_prior, references):
        scores = pair_scores(model.f(batch.x), model.g(batch.y), model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)


class ZeroPadding(Method):
    """`zero_padding` — the feature of a missing modality is replaced by zeros (§3.3, "ZP"):
    g(y) = 0 for samples whose y is missing (f(x) = 0 for those whose x is missing), then eq. 4
    on every training sample. With add, φ = f; with concat, φ = [f; 0]. Outer is refused:
    φ = vec(f ⊗ 0) = 0 makes the missing samples carry no information, as the paper notes.
    The padding is in feature space (after the encoder), not in input space.
    At test time without y: the same, g(y) = 0."""

    name = "zero_padding"

    @staticmethod
    def _padded(encoder, inputs: torch.Tensor, present: tuple[slice, ...], k: int) -> torch.Tensor:
        """encoder(inputs) on the rows of the `present` slices, zeros on the others. The zeros take
        the encoder's output dtype (16 bits under autocast): assembled by concatenation, never
        written into a tensor of another dtype."""
        present = tuple(rows for rows in present if rows.stop > rows.start)
        if not present:  # not inputs.new_zeros: image inputs are uint8, the features are float
            return torch.zeros(len(inputs), k, device=inputs.device, dtype=next(encoder.parameters()).dtype)
        # One encoder call over the present rows, in order, as a masked index would have gathered them.
        features = encoder(torch.cat([inputs[rows] for rows in present]) if len(present) > 1 else inputs[present[0]])
        pieces, done, used = [], 0, 0
        for rows in present:
            if rows.start > done:
                pieces.append(features.new_zeros(rows.start - done, k))
            pieces.append(features[used : used + rows.stop - rows.start])
            used, done = used + rows.stop - rows.start, rows.stop
        if done < len(inputs):
            pieces.append(features.new_zeros(len(inputs) - done, k))
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def loss(self, model, batch, log_prior, references):
        k = model.feature_dim
        f = self._padded(model.f, batch.x, (batch.complete_rows, batch.y_missing_rows), k)
        g = self._padded(model.g, batch.y, (batch.complete_rows, batch.x_missing_rows), k)
        scores = pair_scores(f, g, model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)

    @torch.no_grad()
    def predict_log_proba_without_y(self, model, x, log_prior, y_bank):
        f = model.f(x)
        scores = pair_scores(f, torch.zeros_like(f), model.label_embeddings(), model.fusion)
        return log_posterior(scores, log_prior)


# φ for the H-score and soft-HGR, in fp32 like them (under autocast the encoders' features are
# 16-bit, and an outer product of two of them would round each product to 8 bits of mantissa).
fuse_in_fp32 = in_fp32(fuse)


@in_fp32
def soft_hgr(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Soft-HGR objective H(u, v) = E[ũᵀṽ] − ½ tr(cov(u) cov(v)) on centred features (n, d)."""
    n = len(u)
    u = u - u.mean(0)
    v = v - v.mean(0)
    cross = (u * v).sum() / (n - 1)
    if u.shape[1] <= n:
        trace = (u.T @ u * (v.T @ v)).sum()  # tr(AB) = Σ A∘B for symmetric A, B
    else:  # wide features (outer product): tr(UᵀU VᵀV) = ‖U Vᵀ‖²_F, an n × n product
        trace = ((u @ v.T) ** 2).sum()
    return cross - 0.5 * trace / (n - 1) ** 2


class MaximalCorrelation(Method):
    """`hgr` — HGR maximal correlation in its soft-HGR form (§3.3; Wang et al. 2019, Ma et al. 2020).

    Loss per batch: −[n_c·H(φ(f(x), g(y)), h(z)) over complete samples + n_m·H(f(x), h_x(z)) over
    samples whose y is missing (+ n_x·H(g(y), h_y(z)) over samples whose x is missing)] / B,
    where H is `soft_hgr` and h_x, h_y are label heads of size k beside h (the paper leaves
    open how x alone meets the label; a head of its own works for every fusion). Parts with
    fewer than two samples in a batch are skipped (a covariance needs two).
    Prediction, the H-score rule on centred features: Q(z|x,y) ∝ R_Z(z)·max(1 + φ̃ᵀh̃(z), ε) with
    φ̃ = φ − E[φ] (mean over the complete training samples) and h̃(z) = h(z) − Σ_z' R_Z(z')h(z');
    without y at test time, the same rule on f̃(x) and h̃_x(z).
    """

    name = "hgr"
    EPSILON = 1e-6

    def __init__(self, spec):
        super().__init__(spec)
        self.mean_phi: torch.Tensor | None = None
        self.mean_f: torch.Tensor | None = None

    def build_model(self, x, y, n_classes):
        return two_view_model(self.spec, x, y, n_classes, single_view_heads=True)

    def loss(self, model, batch, log_prior, references):
        H = model.label_embeddings()
        total = batch.z.new_zeros((), dtype=H.dtype)
        n_complete, n_y_missing, n_x_missing = batch.parts
        complete = batch.complete_rows
        if n_complete >= 2:
            phi = fuse_in_fp32(model.f(batch.x[complete]), model.g(batch.y[complete]), model.fusion)
            total = total + n_complete * soft_hgr(phi, H[batch.z[complete]])
        single_view_parts = ((batch.y_missing_rows, n_y_missing, model.f, batch.x, model.h_x),
                             (batch.x_missing_rows, n_x_missing, model.g, batch.y, model.h_y))
        for rows, n, encoder, inputs, head in single_view_parts:
            if n >= 2:
                label_features = head.weight.T[batch.z[rows]] + head.bias
                total = total + n * soft_hgr(encoder(inputs[rows]), label_features)
        return -total / len(batch.z)

    @torch.no_grad()
    def fit_statistics(self, model, train):
        # Means in fp32: evaluation runs under autocast, where the features are 16-bit.
        complete = train.complete
        f = _features(model.f, train.x[complete]).float()
        g = _features(model.g, train.y[complete]).float()
        self.mean_phi = fuse(f, g, model.fusion).mean(0)
        self.mean_f = _features(model.f, train.x[train.has_x]).float().mean(0)

    def prediction_state(self):
        return {"mean_phi": self.mean_phi, "mean_f": self.mean_f}

    def load_prediction_state(self, state, device):
        self.mean_phi, self.mean_f = state["mean_phi"].to(device), state["mean_f"].to(device)

    @in_fp32
    def _h_score(self, features, mean, label_features, log_prior):
        # In fp32: in bf16, 30 of 512 predictions changed on the same features, and 47 rows had
        # tied maxima, so an hgr run's accuracy would have depended on its precision.
        prior = log_prior.exp()
        centred_labels = label_features - prior @ label_features
        score = 1.0 + (features - mean) @ centred_labels.T
        probs = prior * score.clamp_min(self.EPSILON)
        return torch.log(probs / probs.sum(1, keepdim=True))

    @torch.no_grad()
    def predict_log_proba(self, model, x, y, log_prior):
        phi = fuse_in_fp32(model.f(x), model.g(y), model.fusion)
        return self._h_score(phi, self.mean_phi, model.label_embeddings(), log_prior)

    @torch.no_grad()
    def predict_log_proba_without_y(self, model, x, log_prior, y_bank):
        head = model.h_x
        return self._h_score(model.f(x), self.mean_f, head.weight.T + head.bias, log_prior)


class AutoencoderImputation(Method):
    """`ae1` — impute the missing modality, then classify (§3.3, "Autoencoder1").

    Stage 1: an MLP imputer x → y (`MLPImputer`, MSE on standardised inputs, Adam with the
    run's learning rate and batch size) is fitted on the complete training samples for
    `imputer_epochs` epochs, and fills in y for the samples that lack it (a second imputer
    y → x does the same for samples that lack x, when both are partly missing). Stage 2: eq. 4
    on all training samples, complete and imputed, for `epochs` epochs (the epochs shown on the
    curves; the imputer's epochs come before them and are recorded as `imputer_*` points).
    The paper applies this to extracted features (§3.4); here it works on the inputs given,
    which for feature datasets are those features.
    At test time without y: impute y from x with the imputer, then eq. 4.
    """

    name = "ae1"

    def __init__(self, spec):
        super().__init__(spec)
        self.imputer_y: torch.nn.Module | None = None

    def rounds_for(self) -> int:
        return 1

    def state_dict(self):
        if self.imputer_y is None:
            return {}
        return {"imputer_y": self.imputer_y.state_dict(), "imputer_y_shape": self._imputer_y_shape}

    def load_state_dict(self, state, device):
        if "imputer_y" in state:
            in_dim, out_shape = state["imputer_y_shape"]
            self.imputer_y = MLPImputer(in_dim, self.spec.hidden_dim, tuple(out_shape)).to(device)
            self.imputer_y.load_state_dict(state["imputer_y"])
            self.imputer_y.eval()
            self._imputer_y_shape = (in_dim, tuple(out_shape))

    def _fit_imputer(self, source: torch.Tensor, target: torch.Tensor, fitted_rows: torch.Tensor,
                     imputer: torch.nn.Module, rng: np.random.Generator, report: Callable[[float], bool]) -> bool:
        """Fit `imputer` on rows `fitted_rows` (indices); False when cancelled."""
        optimiser = torch.optim.Adam(imputer.parameters(), lr=self.spec.lr)
        rows = fitted_rows.cpu().numpy()
        size = min(self.spec.batch_size, len(rows))
        for _ in range(self.spec.imputer_epochs):
            imputer.train()
            order = rng.permutation(rows)
            loss_sum = None  # on the device, in float64 (the sum a Python float made): read once an epoch
            for start in range(0, len(order), size):
                index = device_index(order[start : start + size], source.device)
                loss = F.mse_loss(imputer(source[index]), target[index])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                weighted = loss.detach().double() * len(index)
                loss_sum = weighted if loss_sum is None else loss_sum + weighted
            if not report(loss_sum.item() / len(rows)):
                return False
        imputer.eval()
        return True

    def _impute(self, source: torch.Tensor, target: torch.Tensor, source_present: torch.Tensor,
                target_present: torch.Tensor, callback: Any, rng: np.random.Generator, label: str,
                epoch_offset: list[int]) -> tuple[torch.nn.Module, torch.Tensor] | None:
        imputer = MLPImputer(int(np.prod(source.shape[1:])), self.spec.hidden_dim, tuple(target.shape[1:]))
        imputer = imputer.to(source.device)
        complete_rows = torch.nonzero(source_present & target_present).flatten()
        to_fill = torch.nonzero(source_present & ~target_present).flatten()
        targets = target.clone()

        def report(mse: float) -> bool:
            epoch_offset[0] += 1
            callback.on_stage_epoch("imputer", epoch_offset[0], {f"imputer_{label}_mse": mse})
            return not callback.should_stop()

        for round_index in range(self.rounds_for()):
            # Round 1: the complete samples; later rounds (ae2): plus the previous imputations.
            fitted = complete_rows if round_index == 0 else torch.cat([complete_rows, to_fill])
            if not self._fit_imputer(source, targets, fitted, imputer, rng, report):
                return None
            with torch.no_grad():
                targets[to_fill] = _features(imputer, source[to_fill])
        return imputer, targets

    def prepare(self, train, callback, seed):
        rng = np.random.default_rng([seed, 3])
        epoch_offset = [0]
        imputed_y = imputed_x = None
        if (train.has_x & ~train.has_y).any():
            outcome = self._impute(train.x, train.y, train.has_x, train.has_y, callback, rng, "y", epoch_offset)
            if outcome is None:
                return None
            self.imputer_y, imputed_y = outcome
            self._imputer_y_shape = (int(np.prod(train.x.shape[1:])), tuple(train.y.shape[1:]))
        if (~train.has_x & train.has_y).any():
            outcome = self._impute(train.y, train.x, train.has_y, train.has_x, callback, rng, "x", epoch_offset)
            if outcome is None:
                return None
            imputed_x = outcome[1]
        return train.with_imputed(x=imputed_x, y=imputed_y)

    def loss(self, model, batch, log_prior, references):
        scores = pair_scores(model.f(batch.x), model.g(batch.y), model.label_embeddings(), model.fusion)
        return F.nll_loss(log_posterior(scores, log_prior), batch.z)

    @torch.no_grad()
    def predict_log_proba_without_y(self, model, x, log_prior, y_bank):
        if self.imputer_y is None:  # nothing was missing in training: no imputer to ask
            return super().predict_log_proba_without_y(model, x, log_prior, y_bank)
        return self.predict_log_proba(model, x, self.imputer_y(x), log_prior)


class SelfTrainingImputation(AutoencoderImputation):
    """`ae2` — `ae1` with self-training (§3.3, "Autoencoder2"): the imputer is fitted in
    `self_training_rounds` rounds of `imputer_epochs` epochs each. Round 1 fits on the complete
    samples, as ae1; each later round continues on the complete samples plus the samples with
    a missing modality, whose targets are the previous round's imputations (the "pseudo
    values"), and then imputes them again. Stage 2 is eq. 4 on all samples, as ae1."""

    name = "ae2"

    def rounds_for(self) -> int:
        return self.spec.self_training_rounds


class MethodFailed(RuntimeError):
    """A plugin's method broke the protocol or raised; the message names the method, its package
    and what went wrong, and becomes the run's error."""


class MethodUnavailable(RuntimeError):
    """The method's implementation cannot be imported here."""


def implementation_of(description: MethodDescription) -> type[Method]:
    """The Method subclass the description names (imports it: torch)."""
    module_name, _, attribute = description.implementation.partition(":")
    where = f"method {description.name!r} ({description.distribution} {description.version})"
    try:
        implementation = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # a missing dependency, a syntax error, a missing class
        raise MethodUnavailable(f"{where}: its implementation {description.implementation} cannot be imported: "
                                f"{type(error).__name__}: {error}") from error
    if not (isinstance(implementation, type) and issubclass(implementation, Method)):
        raise MethodUnavailable(f"{where}: {description.implementation} is not a training.methods.Method subclass")
    return implementation


def trainable_methods() -> tuple[dict[str, MethodDescription], dict[str, str]]:
    """What this process can train (a worker advertises it): the registered methods whose
    implementation imports, and for the others why not."""
    trainable, reasons = {}, {}
    for name, description in METHODS.items():
        try:
            implementation_of(description)
        except MethodUnavailable as error:
            reasons[name] = str(error)
        else:
            trainable[name] = description
    return trainable, reasons


def _passes_through(error: BaseException) -> bool:
    # Running out of memory is the worker's to handle (a slot of its own), not the plugin's fault.
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(error)


class CheckedMethod:
    """A plugin's method, held to the protocol while it trains: what it raises is reported as its
    own (method, package, which call), a loss that is not a finite scalar and predictions that are
    not (rows, classes) stop the run with that reason. Built-in methods are not wrapped (no check
    costs them a device read per step)."""

    def __init__(self, method: Method, description: MethodDescription):
        self.inner, self.description = method, description
        self.steps = 0

    def __getattr__(self, name: str) -> Any:  # attributes the protocol does not check
        return getattr(self.inner, name)

    def _failed(self, call: str, problem: str) -> MethodFailed:
        d = self.description
        return MethodFailed(f"method {d.name!r} ({d.distribution} {d.version}): {call} {problem}")

    def _call(self, call: str, function: Callable, *args: Any) -> Any:
        try:
            return function(*args)
        except MethodFailed:
            raise
        except Exception as error:
            if _passes_through(error):
                raise
            raise self._failed(call, f"raised {type(error).__name__}: {error}") from error

    def build_model(self, x, y, n_classes):
        return self._call("build_model()", self.inner.build_model, x, y, n_classes)

    def prepare(self, train, callback, seed):
        return self._call("prepare()", self.inner.prepare, train, callback, seed)

    def loss(self, model, batch, log_prior, references):
        self.steps += 1
        loss = self._call(f"loss() at training step {self.steps}", self.inner.loss, model, batch, log_prior, references)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise self._failed(f"loss() at training step {self.steps}",
                               f"returned {shape}: the protocol expects a scalar tensor (the batch's mean loss)")
        if not bool(torch.isfinite(loss.detach())):  # a device read per step: plugins only
            raise self._failed(f"loss() at training step {self.steps}",
                               f"returned {loss.item()}: the loss must be finite (the run stops rather than "
                               f"train on it; its points and checkpoints so far are kept)")
        return loss

    def fit_statistics(self, model, train):
        return self._call("fit_statistics()", self.inner.fit_statistics, model, train)

    def _checked_prediction(self, call: str, log_q: Any, rows: int, classes: int) -> torch.Tensor:
        if not isinstance(log_q, torch.Tensor) or tuple(log_q.shape) != (rows, classes):
            shape = tuple(log_q.shape) if isinstance(log_q, torch.Tensor) else type(log_q).__name__
            raise self._failed(call, f"returned {shape}: the protocol expects ({rows}, {classes}), "
                                     f"log-probabilities of each class for each sample")
        return log_q

    def predict_log_proba(self, model, x, y, log_prior):
        log_q = self._call("predict_log_proba()", self.inner.predict_log_proba, model, x, y, log_prior)
        return self._checked_prediction("predict_log_proba()", log_q, len(x), len(log_prior))

    def predict_log_proba_without_y(self, model, x, log_prior, y_bank):
        log_q = self._call("predict_log_proba_without_y()", self.inner.predict_log_proba_without_y, model, x,
                           log_prior, y_bank)
        return self._checked_prediction("predict_log_proba_without_y()", log_q, len(x), len(log_prior))

    def state_dict(self):
        return self._call("state_dict()", self.inner.state_dict)

    def load_state_dict(self, state, device):
        return self._call("load_state_dict()", self.inner.load_state_dict, state, device)


def make_method(spec: TrainSpec) -> Method:
    """The run's method, through the registry like every method; a plugin's is checked as it trains."""
    description = METHODS[spec.method]
    method = implementation_of(description)(spec)
    return method if description.builtin else CheckedMethod(method, description)  # type: ignore[return-value]


# The built-in implementations by name (tests, benchmarks).
METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (MaximumLikelihood, LowerBound, ZeroPadding, MaximalCorrelation, AutoencoderImputation,
                SelfTrainingImputation)
}
