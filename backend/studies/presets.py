"""Tuned presets: a paper preset's comparison with every candidate tuned on validation with the
same budget at every setting, then its final runs (docs/studies.md, "Presets"). The candidates and
settings are read from the sweep presets (backend/sweeps/presets.py), so the tuned and the untuned
experiment compare the same things."""

from __future__ import annotations

from dataclasses import dataclass

from ..runs.validation import DatasetCatalog
from ..sweeps.presets import PRESETS, ROLES, preset_roles
from ..sweeps.schemas import PresetRequest
from .schemas import CandidateIn, StudyCreate, StudyPresetRequest


class StudyPresetNotFound(LookupError):
    def __str__(self) -> str:
        return f"no study preset {self.args[0]!r} (there are: {', '.join(STUDY_PRESETS)})"


@dataclass(frozen=True)
class StudyPreset:
    name: str
    title: str
    description: str
    sweep_preset: str  # whose blocks give the candidates, roles and rates
    with_options: bool  # keep the blocks that fix options (ablations) as candidates of their own

    def candidates(self) -> list[tuple[str, str, dict]]:
        blocks = PRESETS[self.sweep_preset].blocks
        return list(dict.fromkeys((block.method, fusion, tuple(block.options)) for block in blocks
                                  for fusion in block.fusions if self.with_options or not block.options))

    def roles(self) -> list[str]:
        used = {role for block in PRESETS[self.sweep_preset].blocks for role in block.roles}
        return [role for role in ROLES if role in used]

    def rates(self) -> list[float]:
        return sorted({rate for block in PRESETS[self.sweep_preset].blocks for rate in block.rates})

    def labels(self) -> list[str]:
        return [f"{method} ({fusion})" + "".join(f", {k}={v}" for k, v in options)
                for method, fusion, options in self.candidates()]


STUDY_PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in (
        StudyPreset(
            name="table1_tuned",
            title="Table 1, tuned",
            description="Every method and fusion of the paper's Table 1 (Lower Bound, HGR, Zero Padding, MLE), each "
                        "tuned on validation accuracy with the same number of trials at every missing rate (80/90/95%) "
                        "of either modality, then its best configuration trained over the final seeds.",
            sweep_preset="table1", with_options=False),
        StudyPreset(
            name="mle_vs_zero_padding_tuned",
            title="MLE vs zero padding, tuned",
            description="Zero Padding and MLE (additive fusion), the paper's `audio` role missing at 80/90/95%, each "
                        "tuned with the same budget: does zero padding's lead over MLE on small data (docs/results.md) "
                        "survive when neither trains with defaults that may suit the other?",
            sweep_preset="mle_vs_zero_padding", with_options=False),
    )
}


def get_study_preset(name: str) -> StudyPreset:
    preset = STUDY_PRESETS.get(name)
    if preset is None:
        raise StudyPresetNotFound(name)
    return preset


def preset_study(preset: StudyPreset, request: StudyPresetRequest,
                 catalog: DatasetCatalog) -> tuple[StudyCreate, dict[str, str]]:
    """The study a tuned preset makes on the request's dataset, and the roles it mapped."""
    roles = preset_roles(PresetRequest(dataset=request.dataset, visual=request.visual, audio=request.audio), catalog)
    payload = StudyCreate(
        name=request.name or f"{preset.title} on {request.dataset}", dataset=request.dataset,
        missing_modality=[roles[role] for role in preset.roles()], missing_rate=preset.rates(),
        methods=[CandidateIn(method=method, fusion=fusion, options=dict(options))
                 for method, fusion, options in preset.candidates()],
        spec={"epochs": request.epochs}, trials=request.trials, sampler=request.sampler, pruner=request.pruner,
        parallel_trials=request.parallel_trials, final_seeds=request.final_seeds)
    return payload, roles
