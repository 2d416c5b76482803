"""The paper's experiments as data: each preset is a list of blocks (a method, its fusions, the
missing modality roles, the missing rates, the feature extractors), expanded into run specs
on the dataset the user picks, with the paper's `visual` and `audio` mapped onto that
dataset's two modalities.

A preset may name methods or feature extractors the training library does not have yet
(`hgr`, `ae1`, `ae2`, pre-trained video backbones). It is then refused with what is missing,
or, when asked, only its available part is created; nothing here stands in for a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.training.spec import METHODS, TrainSpec

from .paper import TABLE_1, TABLE_2, PaperTable

ROLES = ("visual", "audio")
# The TrainSpec field a feature extractor will be chosen by, once the training library has one.
FEATURES_FIELD = "features"


@dataclass(frozen=True)
class Block:
    """Every combination of one method with these fusions, roles, rates (and extractors)."""

    method: str
    fusions: tuple[str, ...]
    roles: tuple[str, ...]
    rates: tuple[float, ...]
    features: tuple[str, ...] = ()  # empty: the dataset's own inputs


@dataclass(frozen=True)
class Preset:
    name: str
    figure: str  # "Table 1", "Fig. 4", …
    title: str
    description: str
    paper_dataset: str
    # Catalogue names of the paper's dataset: only there are our numbers comparable to the paper's.
    paper_dataset_names: frozenset[str]
    blocks: tuple[Block, ...]
    reported: PaperTable | None
    focus: str  # what the sweep page leads with: table, trend, confusion or curves
    assumptions: tuple[str, ...] = ()

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(block.method for block in self.blocks))

    @property
    def features(self) -> list[str]:
        return list(dict.fromkeys(f for block in self.blocks for f in block.features))

    def runs_per_seed(self) -> int:
        return sum(len(b.fusions) * len(b.roles) * len(b.rates) * max(1, len(b.features)) for b in self.blocks)


ALL_FUSIONS = ("add", "concat", "outer")
ENTERFACE = frozenset({"enterface05", "enterface"})
RAVDESS = frozenset({"ravdess"})

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="table1",
            figure="Table 1",
            title="Missing modality on eNTERFACE'05: every method and fusion",
            description="Lower Bound, HGR, Zero Padding and MLE with each fusion, visual or audio missing at "
                        "80/90/95%. Rows method (fusion), columns missing modality × rate, mean ± std over seeds.",
            paper_dataset="eNTERFACE'05",
            paper_dataset_names=ENTERFACE,
            blocks=(
                Block("lower_bound", ALL_FUSIONS, ROLES, (0.8, 0.9, 0.95)),
                Block("hgr", ALL_FUSIONS, ROLES, (0.8, 0.9, 0.95)),
                Block("zero_padding", ("add", "concat"), ROLES, (0.8, 0.9, 0.95)),
                Block("mle", ALL_FUSIONS, ROLES, (0.8, 0.9, 0.95)),
            ),
            reported=TABLE_1,
            focus="table",
        ),
        Preset(
            name="table2",
            figure="Table 2",
            title="Missing modality on RAVDESS: MLE against autoencoder imputation, on pre-trained features",
            description="AE1, AE2 and MLE on VGG-16, ResNet-34 and ResNet-50 features, visual or audio missing at "
                        "50/80/90%.",
            paper_dataset="RAVDESS",
            paper_dataset_names=RAVDESS,
            blocks=tuple(
                Block(method, ("add",), ROLES, (0.5, 0.8, 0.9), ("vgg16", "resnet34", "resnet50"))
                for method in ("ae1", "ae2", "mle")
            ),
            reported=TABLE_2,
            focus="table",
            assumptions=("The paper does not say which fusion Table 2 used; addition is assumed.",),
        ),
        Preset(
            name="fig4",
            figure="Fig. 4",
            title="Accuracy as the audio missing rate grows: Zero Padding against MLE",
            description="Zero Padding and MLE with each of their fusions, audio missing at 50/80/90/95%.",
            paper_dataset="eNTERFACE'05",
            paper_dataset_names=ENTERFACE,
            blocks=(
                Block("zero_padding", ("add", "concat"), ("audio",), (0.5, 0.8, 0.9, 0.95)),
                Block("mle", ALL_FUSIONS, ("audio",), (0.5, 0.8, 0.9, 0.95)),
            ),
            reported=TABLE_1,  # Fig. 4's points at 80/90/95% are Table 1's audio columns
            focus="trend",
        ),
        Preset(
            name="fig5",
            figure="Fig. 5",
            title="Confusion matrices at 95% visual missing",
            description="Lower Bound, HGR, Zero Padding and MLE with 95% of the visual modality missing; the "
                        "sweep page shows their test confusion matrices side by side.",
            paper_dataset="eNTERFACE'05",
            paper_dataset_names=ENTERFACE,
            blocks=tuple(Block(m, ("add",), ("visual",), (0.95,)) for m in ("lower_bound", "hgr", "zero_padding", "mle")),
            reported=TABLE_1,
            focus="confusion",
            assumptions=("The paper does not say which fusion Fig. 5 used; addition is assumed.",),
        ),
        Preset(
            name="fig6",
            figure="Fig. 6",
            title="Accuracy per epoch at 50% audio missing: MLE against AE1 and AE2",
            description="AE1, AE2 and MLE with 50% of the audio modality missing; the sweep page overlays their "
                        "test accuracy per epoch.",
            paper_dataset="RAVDESS",
            paper_dataset_names=RAVDESS,
            blocks=tuple(Block(m, ("add",), ("audio",), (0.5,), ("resnet50",)) for m in ("ae1", "ae2", "mle")),
            reported=TABLE_2,
            focus="curves",
            assumptions=("The paper does not say which feature extractor or fusion Fig. 6 used; ResNet-50 features "
                         "(its best in Table 2) and addition are assumed.",),
        ),
    )
}


def spec_has_features() -> bool:
    return FEATURES_FIELD in TrainSpec.model_fields


def missing_capabilities(preset: Preset) -> tuple[list[str], list[str]]:
    """The preset's methods and feature extractors the training library does not have yet."""
    return ([m for m in preset.methods if m not in METHODS], [] if spec_has_features() else preset.features)


@dataclass
class PresetPlan:
    """What a preset request expands to, and what could not be included."""

    combinations: list[dict[str, Any]]
    roles: dict[str, str]  # paper role → dataset modality
    missing_methods: list[str] = field(default_factory=list)
    missing_features: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # notes, when only the available part is created

    @property
    def complete(self) -> bool:
        return not self.missing_methods and not self.missing_features

    def missing_message(self, available_runs: int) -> str:
        parts = []
        if self.missing_methods:
            parts.append(f"method{'s' if len(self.missing_methods) > 1 else ''} "
                         f"{', '.join(self.missing_methods)} (the training library has: {', '.join(METHODS)})")
        if self.missing_features:
            parts.append(f"feature extractors {', '.join(self.missing_features)} (the training spec has no "
                         f"`{FEATURES_FIELD}` setting yet)")
        offer = (f"; set only_available to create the {available_runs} runs that can run now" if available_runs
                 else "; nothing of it can run yet")
        return "this preset needs what the training library does not have yet: " + " and ".join(parts) + offer


def plan_preset(preset: Preset, *, dataset: str, roles: dict[str, str], seeds: int, epochs: int,
                only_available: bool) -> PresetPlan:
    """The run specs of the preset, seed by seed (so a first pass fills every cell of the
    table before seeds repeat). Unavailable methods/extractors are left out when
    `only_available`, else recorded as missing (and nothing is expanded for them)."""
    missing_methods, missing_features = missing_capabilities(preset)
    has_features = not missing_features
    plan = PresetPlan(combinations=[], roles=dict(roles), missing_methods=missing_methods,
                      missing_features=missing_features)
    if only_available:
        if missing_methods:
            plan.left_out.append(f"methods not available yet: {', '.join(missing_methods)}")
        if missing_features:
            plan.left_out.append(f"feature extractors not available yet ({', '.join(missing_features)}): "
                                 "runs use the dataset's own inputs")
    for seed in range(seeds):
        for block in preset.blocks:
            if block.method in missing_methods:
                continue
            extractors = block.features if (block.features and has_features) else (None,)
            for role in block.roles:
                for rate in block.rates:
                    for fusion in block.fusions:
                        for extractor in extractors:
                            combination = {"dataset": dataset, "method": block.method, "fusion": fusion,
                                           "missing_modality": roles[role], "missing_rate": rate,
                                           "epochs": epochs, "seed": seed}
                            if extractor is not None:
                                combination[FEATURES_FIELD] = extractor
                            plan.combinations.append(combination)
    return plan
