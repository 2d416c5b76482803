"""The descriptions of the six built-in methods (the paper's method and its baselines): the light
half of each, registered like any plugin's (training/method_registry.py; missmod's pyproject
names these objects as entry points of `missmod.methods`). Their implementations are in
training/methods.py. Their options predate the protocol and are top-level spec fields
(`imputer_epochs`, `self_training_rounds`, the mle ablations), so their options models are empty.

No torch here: the API process imports this module."""

from __future__ import annotations

from .plugins import FUSIONS, MethodDescription

mle = MethodDescription(
    name="mle",
    title="Maximum likelihood (ours)",
    description="Eq. 2: −log Q(z|x,y) on complete samples (eq. 4) plus −log Q(z|x) on samples whose y is missing "
                "(eq. 5, marginalising y over the complete data).",
    implementation="training.methods:MaximumLikelihood",
    fusions=FUSIONS,
)
lower_bound = MethodDescription(
    name="lower_bound",
    title="Lower bound (discard incomplete)",
    description="Eq. 4 on the complete samples only; samples with a missing modality are dropped.",
    implementation="training.methods:LowerBound",
    fusions=FUSIONS,
)
zero_padding = MethodDescription(
    name="zero_padding",
    title="Zero padding",
    description="The missing modality's feature is set to zero, then eq. 4 on all samples. "
                "Not with outer product: φ(f, 0) = 0 would make the missing samples useless.",
    implementation="training.methods:ZeroPadding",
    fusions=("add", "concat"),
)
hgr = MethodDescription(
    name="hgr",
    title="HGR maximal correlation",
    description="Soft-HGR: maximal correlation between φ(f(x), g(y)) and the label features on complete samples, "
                "and between f(x) and the label features on samples whose y is missing; predicts with the H-score "
                "rule.",
    implementation="training.methods:MaximalCorrelation",
    fusions=FUSIONS,
)
ae1 = MethodDescription(
    name="ae1",
    title="Autoencoder imputation (AE1)",
    description="A network x → y trained on the complete samples imputes the missing y; then eq. 4 on all samples.",
    implementation="training.methods:AutoencoderImputation",
    fusions=FUSIONS,
)
ae2 = MethodDescription(
    name="ae2",
    title="Autoencoder imputation with self-training (AE2)",
    description="AE1, with the imputer re-fitted in rounds on the complete samples plus the previous round's "
                "imputations; then eq. 4 on all samples.",
    implementation="training.methods:SelfTrainingImputation",
    fusions=FUSIONS,
)

# In the order the forms and tables list them.
BUILTIN: tuple[MethodDescription, ...] = (mle, lower_bound, zero_padding, hgr, ae1, ae2)
