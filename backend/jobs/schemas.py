"""What the dataset-job API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from training.spec import BackboneName, DeviceChoice

from ..api.params import CleanInput



class FeatureExtractionCreate(CleanInput):
    model_config = ConfigDict(extra="forbid")

    backbone: BackboneName
    pretrained: bool = Field(False, description="ImageNet weights from the worker's torch cache; random weights when off")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                             description="Features dataset name; default <dataset>-<backbone>-imagenet|random")
    batch_size: int = Field(64, ge=1, le=4096)
    device: DeviceChoice = "auto"


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    dataset: str
    params: dict[str, Any]
    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    attempts: int
    worker_losses: int = Field(description="Times it was taken from a worker that died (requeued by reconcile)")
    awaiting_broker: bool = Field(False, description="Queued and saved, but waiting for the broker (it was down); "
                                                     "sent as soon as it is back")
    cancel_requested: bool
    done: int = Field(description="Clips preprocessed (preprocess) or segments encoded (extract_features)")
    total: int
    result: dict[str, Any] | None = Field(description="Once succeeded: the preprocessing summary, or the features file")
    error: str | None
    error_detail: str | None
