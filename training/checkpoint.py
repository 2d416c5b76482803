"""Checkpoints: everything needed to continue a run after its last finished epoch, written
atomically (a temporary file, then a rename), so a crash mid-write leaves the previous one.

A checkpoint belongs to one spec: resuming with a different spec starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .spec import ABLATION_DEFAULTS

FORMAT_VERSION = 1


# Fields that do not change the training: `device` (a run may resume on another GPU), and how
# often it is logged (a checkpoint written before log_every_steps existed still matches).
NOT_IN_FINGERPRINT = frozenset({"device", "log_every_steps"})


def spec_fingerprint(spec_fields: dict[str, Any]) -> str:
    """Fields that change the training; `device` and `compile` do not, so a run may resume on
    another GPU, and fields added later do not at their default (the fingerprint of a spec is as
    it was): the ablations' and `precision: auto`."""
    relevant = {k: v for k, v in spec_fields.items()
                if k not in NOT_IN_FINGERPRINT and not (k in ABLATION_DEFAULTS and v == ABLATION_DEFAULTS[k])
                and not (k == "precision" and v == "auto")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT_VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one for this spec; None otherwise."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and types only
    if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != fingerprint:
        return None
    return state
