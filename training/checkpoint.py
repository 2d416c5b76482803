"""Checkpoints: everything needed to continue a run after its last finished epoch, written
atomically (a temporary file, then a rename), so a crash mid-write leaves the previous one.

A checkpoint belongs to one spec: resuming with a different spec starts over.

Where it lives is the caller's: a local path, or any object with `read_bytes() -> bytes | None`
and `write_bytes(data)` (the dashboard's artifact store, which may be a bucket on another
machine). This library knows nothing of either beyond that.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .atomic import atomic_write
from .spec import DEFAULTS_OF_LATER_OPTIONS

FORMAT_VERSION = 1


# Fields that do not change the training: `device` (a run may resume on another GPU), and how
# often it is logged (a checkpoint written before log_every_steps existed still matches).
NOT_IN_FINGERPRINT = frozenset({"device", "compile", "log_every_steps"})
# Fields added to the spec after checkpoints were written, at the value that trains as before:
# left out of the fingerprint there, so those checkpoints still resume.
LATER_FIELD_DEFAULTS: dict[str, Any] = DEFAULTS_OF_LATER_OPTIONS


def spec_fingerprint(spec_fields: dict[str, Any]) -> str:
    """Fields that change the training; `device` and `compile` do not, so a run may resume on
    another GPU, and fields added later do not at their default (the fingerprint of a spec is as
    it was): the ablations', the selection rule's, `precision: auto`, `deterministic: false`."""
    relevant = {k: v for k, v in spec_fields.items()
                if k not in NOT_IN_FINGERPRINT and not (k in LATER_FIELD_DEFAULTS and v == LATER_FIELD_DEFAULTS[k])}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random generators a run draws from while it trains (dropout): the CPU's, and the
    GPU's when it trains on one."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """As `random_state` left them; a GPU's state is restored on a GPU only (a run resumed on the
    CPU draws its own)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@runtime_checkable
class CheckpointTarget(Protocol):
    """Somewhere other than a local path: writes must be atomic (the reader sees the old
    checkpoint or the new one, never half of one)."""

    def read_bytes(self) -> bytes | None: ...

    def write_bytes(self, data: bytes) -> None: ...


def save_checkpoint(path: Path | CheckpointTarget, state: dict[str, Any]) -> None:
    if not isinstance(path, (str, Path)):
        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, **state}, buffer)
        path.write_bytes(buffer.getvalue())
        return
    with atomic_write(path) as file:
        torch.save({"format": FORMAT_VERSION, **state}, file)


def load_checkpoint(path: Path | CheckpointTarget | None, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one for this spec; None otherwise."""
    if path is None:
        return None
    if isinstance(path, (str, Path)):
        if not Path(path).exists():
            return None
        source = path
    else:
        data = path.read_bytes()
        if data is None:
            return None
        source = io.BytesIO(data)
    state = torch.load(source, map_location="cpu", weights_only=True)  # plain tensors and types only
    if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != fingerprint:
        return None
    return state
