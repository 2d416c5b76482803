"""What the workers API returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class SlotOut(BaseModel):
    index: int = Field(description="0 … slots-1: one process that trains one run at a time")
    state: str = Field(description="idle, waiting (holds a run that waits for the GPU to itself) or training")
    gpu: str | None = Field(description="The GPU the slot trains on (its UUID); null on a CPU-only worker")
    run_id: int | None
    run_name: str | None
    pid: int | None = Field(description="The slot's process while it holds a run")
    since: datetime


class WorkerOut(BaseModel):
    name: str = Field(description="The Celery node name (one per GPU)")
    host: str
    pid: int
    gpu: str | None = Field(description="UUID of the worker's GPU (NVML); null on a CPU-only worker")
    gpu_name: str | None
    threads_per_run: int = Field(description="CPU threads each of its runs uses")
    started_at: datetime
    heartbeat_at: datetime
    busy: int = Field(description="Slots training a run now")
    methods: list[str] | None = Field(None, description="The methods it can train (docs/methods.md); null: a worker "
                                                        "that predates plugins, which trains the built-in ones")
    method_errors: dict[str, str] = Field(default_factory=dict, description="Methods registered on it that it cannot "
                                                                           "train, each with the reason")
    slots: list[SlotOut]


class WaitingRunOut(BaseModel):
    id: int
    name: str
    created_at: datetime
    needs_own_slot: bool = Field(description="It ran out of memory beside other runs: it waits for a GPU to itself")


class QueueOut(BaseModel):
    depth: int = Field(description="Runs queued, not yet taken by a slot")
    waiting: list[WaitingRunOut] = Field(description="The oldest queued runs (up to 50), next to be trained")


class WorkersSnapshot(BaseModel):
    workers: list[WorkerOut]
    queue: QueueOut
