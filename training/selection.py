"""Which epoch a run reports: the selection rule (docs/studies.md, "The selection rule").

The protocol (paper §3.2) selects the model on validation accuracy and reports the test accuracy
of that epoch. On small data the validation accuracy is coarse (a few hundred samples: steps of
a fraction of a point), so ties at the best are common and *which* tied epoch wins, or whether a
rule on validation accuracy is used at all, can move a method's reported figure by more than the
gap between two methods. The rule is therefore a run option, recorded with the run:

- `val_accuracy_earliest` (the default): the best validation accuracy, the earliest epoch among
  ties. It is what every run did before the option existed, so their figures stay as they were;
- `val_accuracy_latest`: the best validation accuracy, the latest epoch among ties (the model
  that trained longest at that accuracy);
- `val_loss`: the lowest validation loss (mean −log Q(z|·)), the earliest among ties: a finer
  signal than accuracy, which rarely ties;
- `last_epoch`: the last epoch, no selection at all.

Pure Python and torch-free: the training loop applies a rule as it trains, and the API applies
every rule to the per-epoch validation and test points a run already recorded, to show how a
comparison changes with the rule without retraining (backend/sweeps/selection_rules.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

SelectionRule = Literal["val_accuracy_earliest", "val_accuracy_latest", "val_loss", "last_epoch"]
SELECTION_RULES: tuple[str, ...] = get_args(SelectionRule)
DEFAULT_SELECTION_RULE: SelectionRule = "val_accuracy_earliest"


@dataclass(frozen=True)
class EpochScore:
    """What a rule reads of one epoch: its validation accuracy and loss."""

    epoch: int
    val_accuracy: float | None
    val_loss: float | None = None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def improves(rule: str, candidate: EpochScore, best: EpochScore | None) -> bool:
    """Whether `candidate`, an epoch after `best`'s, replaces it as the selected epoch.

    The default rule is exactly the comparison the loop made before rules existed
    (`val.accuracy > best.val_accuracy`), so a spec at the default selects the same epoch
    and reports the same figures, to the last digit."""
    if best is None or rule == "last_epoch":
        return True
    if rule == "val_accuracy_earliest":
        return candidate.val_accuracy > best.val_accuracy
    if rule == "val_accuracy_latest":
        return candidate.val_accuracy >= best.val_accuracy
    if rule == "val_loss":
        # A diverged loss (NaN, inf) never wins; a finite one replaces a diverged best.
        if not _finite(candidate.val_loss):
            return False
        return not _finite(best.val_loss) or candidate.val_loss < best.val_loss
    raise ValueError(f"unknown selection rule {rule!r} (known: {', '.join(SELECTION_RULES)})")


def select_epoch(rule: str, epochs: Iterable[EpochScore]) -> EpochScore | None:
    """The epoch `rule` selects among `epochs` (taken in epoch order), as the loop would have;
    None when there is none. Epochs whose validation accuracy is missing are skipped, except by
    `last_epoch`."""
    best = None
    for score in sorted(epochs, key=lambda s: s.epoch):
        if rule != "last_epoch" and not _finite(score.val_accuracy):
            continue
        if improves(rule, score, best):
            best = score
    return best
