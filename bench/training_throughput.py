"""Training throughput on this machine: samples per second of whole epochs (forward, backward,
optimiser step, and the per-epoch evaluation), after a warm-up epoch.

- digits, `mle` with MLP encoders (features mode);
- the small CNN end to end on audio-visual segments (frames + log-Mel spectrograms) of a
  synthetic RAVDESS-like tree made here with PyAV;
- on a GPU, when there is one, ResNet-50 segments per second (optimiser steps).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from training.spec import TrainSpec
from training.train import TrainingCallback, train

from .rows import Row


class EpochClock(TrainingCallback):
    def __init__(self):
        self.marks: list[float] = []
        self.info: dict = {}

    def on_start(self, info):
        self.info = info
        self.marks.append(time.perf_counter())

    def on_epoch_end(self, epoch, metrics):
        self.marks.append(time.perf_counter())

    def samples_per_second(self) -> float:
        epochs = len(self.marks) - 2  # the first epoch warms up
        return self.info["n_train"] * epochs / (self.marks[-1] - self.marks[1])


def digits_rate(epochs: int = 8) -> float:
    clock = EpochClock()
    train(TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9, epochs=epochs,
                    device="cpu"), clock)
    return clock.samples_per_second()


def measure() -> list[Row]:
    from .audiovisual_throughput import backbone_step_rate, make_ravdess_like, small_cnn_training_rate

    rows = [Row("training, digits, mle (MLP), CPU", digits_rate(), "samples/s",
                note=f"{torch.get_num_threads()} torch threads")]
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        make_ravdess_like(data_dir / "ravdess", n_clips=24)
        rate, device = small_cnn_training_rate(data_dir, "cpu")
        rows.append(Row("training, small CNN on audio-visual segments, CPU", rate, "segments/s",
                        note="frames 112×112 and 64-mel spectrograms, end to end"))
    if torch.cuda.is_available():
        rows.append(Row("training, ResNet-50 end to end, GPU", backbone_step_rate("resnet50", "cuda", batch=64),
                        "segments/s", note=torch.cuda.get_device_name()))
    else:
        rows.append(Row("training, ResNet-50 end to end, GPU", None, "segments/s",
                        note="no GPU on this machine: run `make bench` on a GPU host for this row"))
    return rows


def main() -> None:
    from .rows import print_table

    print_table(measure())


if __name__ == "__main__":
    main()
