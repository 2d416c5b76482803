"""The paper's experiments as data: each preset is a list of blocks (a method, its fusions, the
missing modality roles, the missing rates, the feature extractors), expanded into run specs
on the dataset the user picks, with the paper's `visual` and `audio` mapped onto that
dataset's two modalities.

A preset's feature extractors (Table 2: VGG-16, ResNet-34, ResNet-50) are the features
datasets extracted from the picked video dataset — `<dataset>-<backbone>-imagenet` (the
paper's pre-trained setting) or else `<dataset>-<backbone>-random` — made by
`POST /api/datasets/<dataset>/features`. On a dataset that is not raw video (digits, a
features file) there is nothing to extract: the runs use the dataset's own inputs, and the
preset says so. A preset may also name methods the training library does not have: it is then
refused with what is missing or, when asked, only its available part is created; nothing here
stands in for a method.

`plan_preset_request` turns a preset request (POST /api/presets/{name}/preview and /sweeps)
into its runs: the roles on the picked dataset, the features datasets, the run validation of
every combination, and what refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.datasets.naming import features_dataset_names
from training.spec import FUSIONS, METHODS, PAPER_MODALITIES

from ..refused import ErrorDict, Refused
from ..runs.validation import DatasetCatalog
from .grid import SweepPlan, plan_sweep
from .paper import TABLE_1, TABLE_2, PaperTable
from .schemas import PresetRequest

ROLES = PAPER_MODALITIES


class PresetNotFound(LookupError):
    def __str__(self) -> str:
        return f"no preset {self.args[0]!r} (there are: {', '.join(PRESETS)})"


@dataclass(frozen=True)
class Block:
    """Every combination of one method with these fusions, roles, rates (and extractors)."""

    method: str
    fusions: tuple[str, ...]
    roles: tuple[str, ...]
    rates: tuple[float, ...]
    features: tuple[str, ...] = ()  # empty: the dataset's own inputs
    options: tuple[tuple[str, Any], ...] = ()  # other spec fields of these runs (an ablation)


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

    @property
    def missing_methods(self) -> list[str]:
        """The preset's methods the training library does not have."""
        return [m for m in self.methods if m not in METHODS]

    @property
    def runs_per_seed(self) -> int:
        return sum(len(b.fusions) * len(b.roles) * len(b.rates) * max(1, len(b.features)) for b in self.blocks)


ALL_FUSIONS = FUSIONS
ZERO_PADDING_FUSIONS = METHODS["zero_padding"].fusions  # outer product makes its missing samples useless
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
                Block("zero_padding", ZERO_PADDING_FUSIONS, ROLES, (0.8, 0.9, 0.95)),
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
                Block("zero_padding", ZERO_PADDING_FUSIONS, ("audio",), (0.5, 0.8, 0.9, 0.95)),
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
        Preset(
            name="mle_vs_zero_padding",
            figure="Why",
            title="MLE vs zero padding: why",
            description="Zero Padding against MLE as in the paper and three ablations of MLE — eq. 5 sends no "
                        "gradient into g (mle_stop_reference_gradient), the class offset c_z frozen "
                        "(mle_freeze_class_offset), a uniform label prior R_Z (label_prior) — with additive "
                        "fusion, the paper's `audio` role missing at 80/90/95%. Run it on digits and on synthetic "
                        "data; the table compares every row with Zero Padding, seed by seed (docs/results.md).",
            paper_dataset="digits and synthetic (beyond the paper)",
            paper_dataset_names=frozenset(),
            blocks=(
                Block("zero_padding", ("add",), ("audio",), (0.8, 0.9, 0.95)),
                Block("mle", ("add",), ("audio",), (0.8, 0.9, 0.95)),
                Block("mle", ("add",), ("audio",), (0.8, 0.9, 0.95), options=(("mle_stop_reference_gradient", True),)),
                Block("mle", ("add",), ("audio",), (0.8, 0.9, 0.95), options=(("mle_freeze_class_offset", True),)),
                Block("mle", ("add",), ("audio",), (0.8, 0.9, 0.95), options=(("label_prior", "uniform"),)),
            ),
            reported=None,
            focus="table",
            assumptions=("The `audio` role is the dataset's second modality unless chosen: digits' bottom half, "
                         "synthetic's y (its weaker view), as in docs/results.md.",),
        ),
    )
}


def get_preset(name: str) -> Preset:
    preset = PRESETS.get(name)
    if preset is None:
        raise PresetNotFound(name)
    return preset


# backbone → the features dataset to train on, or None when it has not been extracted
FeatureLookup = Callable[[str], str | None]


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

    def missing_message(self, available_runs: int, dataset: str) -> str:
        parts = []
        if self.missing_methods:
            parts.append(f"method{'s' if len(self.missing_methods) > 1 else ''} "
                         f"{', '.join(self.missing_methods)} (the training library has: {', '.join(METHODS)})")
        if self.missing_features:
            parts.append(f"features of {dataset} through {', '.join(self.missing_features)}: extract them first "
                         f"(POST /api/datasets/{dataset}/features with each backbone, or Preprocess and extract "
                         "on the dataset's page)")
        offer = (f"; set only_available to create the {available_runs} runs that can run now" if available_runs
                 else "; nothing of it can run yet")
        return "this preset needs what is not there yet: " + " and ".join(parts) + offer


def plan_preset(preset: Preset, *, dataset: str, roles: dict[str, str], seeds: int, epochs: int,
                only_available: bool, is_video: bool, features: FeatureLookup) -> PresetPlan:
    """The run specs of the preset, seed by seed (so a first pass fills every cell of the
    table before seeds repeat). A feature extractor runs on its features dataset of `dataset`
    (`features`), or, when `dataset` is not raw video, the runs use its own inputs.
    Unavailable methods and extractors are left out when `only_available`, else recorded as
    missing (and nothing is expanded for them)."""
    missing_methods = preset.missing_methods
    extractors = preset.features if is_video else []
    targets = {backbone: features(backbone) for backbone in extractors}
    missing_features = [backbone for backbone, target in targets.items() if target is None]
    plan = PresetPlan(combinations=[], roles=dict(roles), missing_methods=missing_methods,
                      missing_features=missing_features)
    if preset.features and not is_video:
        plan.left_out.append(f"{dataset} is not a raw video dataset, so there are no features to extract: "
                             f"the {', '.join(preset.features)} runs use its own inputs")
    if only_available:
        if missing_methods:
            plan.left_out.append(f"methods not available yet: {', '.join(missing_methods)}")
        if missing_features:
            plan.left_out.append(f"features not extracted yet: {', '.join(missing_features)}")
    for seed in range(seeds):
        for block in preset.blocks:
            if block.method in missing_methods:
                continue
            sources = [targets[b] for b in block.features if targets.get(b)] if (block.features and is_video) \
                else [dataset]
            for role in block.roles:
                for rate in block.rates:
                    for fusion in block.fusions:
                        for source in sources:
                            plan.combinations.append({
                                "dataset": source, "method": block.method, "fusion": fusion,
                                "missing_modality": roles[role], "missing_rate": rate, "epochs": epochs, "seed": seed,
                                **dict(block.options),
                            })
    return plan


# --- a preset request → the runs of its sweep ---------------------------------------------


def preset_roles(request: PresetRequest, catalog: DatasetCatalog) -> dict[str, str]:
    """Which dataset modality plays the paper's visual and audio roles; Refused naming the field."""

    def refuse(field: str, value: Any, message: str) -> Refused:
        return Refused([{"type": "value_error", "loc": ("body", field), "input": value, "msg": message}])

    available = catalog.modalities(request.dataset)
    if available is None or len(available) < 2:
        problem = "unknown dataset" if available is None else "not a two-modality dataset:"
        raise refuse("dataset", request.dataset, f"{problem} {request.dataset!r}")
    visual = request.visual or ("visual" if "visual" in available else available[0])
    audio = request.audio or ("audio" if "audio" in available else next(m for m in available if m != visual))
    for field_name, value in (("visual", visual), ("audio", audio)):
        if value not in available:
            raise refuse(field_name, value, f"dataset {request.dataset!r} has no modality {value!r} "
                                            f"(it has: {', '.join(available)})")
    if visual == audio:
        raise refuse("audio", audio, "visual and audio must be two different modalities")
    return {"visual": visual, "audio": audio}


@dataclass
class PresetRequestPlan:
    """A preset request planned: the preset's combinations, their validated runs, the sweep's
    name, and the errors that refuse creating it (None when it can be created)."""

    preset: Preset
    preset_plan: PresetPlan
    sweep_plan: SweepPlan
    name: str
    refusal: list[ErrorDict] | None
    message: str | None  # the refusal in one line

    def grid(self) -> dict[str, list[Any]]:
        """Not a product (fusions differ per method): the values each field takes, for reading back.
        A field only some runs set (an ablation option) lists the values of those runs."""
        combinations = self.preset_plan.combinations
        return {name: list(dict.fromkeys(c[name] for c in combinations if name in c))
                for name in dict.fromkeys(f for c in combinations for f in c)}


def plan_preset_request(preset: Preset, request: PresetRequest, catalog: DatasetCatalog) -> PresetRequestPlan:
    roles = preset_roles(request, catalog)
    picked = catalog.info(request.dataset)
    is_video = picked is not None and picked.source == "video"

    def features(backbone: str) -> str | None:
        for name in features_dataset_names(request.dataset, backbone):
            info = catalog.info(name)
            if info is not None and info.error is None:
                return name
        return None

    preset_plan = plan_preset(preset, dataset=request.dataset, roles=roles, seeds=request.seeds,
                              epochs=request.epochs, only_available=request.only_available, is_video=is_video,
                              features=features)
    sweep_plan = plan_sweep(preset_plan.combinations, catalog)
    name = request.name or f"{preset.figure} on {request.dataset} ({len(sweep_plan.runs)} runs)"
    refusal, message = None, None
    if not preset_plan.complete and (not request.only_available or not sweep_plan.runs):
        message = preset_plan.missing_message(len(sweep_plan.runs), request.dataset)
        refusal = [{"type": "preset_unavailable", "loc": ("path", "name"), "input": None, "msg": message,
                    "ctx": {"missing_methods": preset_plan.missing_methods,
                            "missing_features": preset_plan.missing_features,
                            "available_runs": len(sweep_plan.runs)}}]
    else:
        refusal = sweep_plan.refusal(skip_invalid=False)
        message = "; ".join(e["msg"] for e in refusal) if refusal else None
    return PresetRequestPlan(preset, preset_plan, sweep_plan, name, refusal, message)
