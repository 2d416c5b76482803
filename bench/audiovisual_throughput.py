"""Audio-visual throughput on this machine, measured in one run:

- preprocessing: clips per second, for clips shaped like RAVDESS's (1280×720 H.264 at 30 fps,
  48 kHz AAC, 3.5 s), all cores and one core, at the default settings (30 segments, 112² frames,
  64 Mel bands);
- training: segments per second through the whole training loop (batches from the uint8 /
  float16 cache, both encoders forward and backward, the mle loss, Adam, and the per-epoch
  evaluation) for the small CNN; and for the torchvision backbones, optimiser steps alone
  (forward, backward, Adam on both encoders), which is what dominates their epochs.

    python -m bench.audiovisual_throughput [--clips 24] [--backbones resnet34 resnet50 vgg16] [--device auto]

Clips are synthetic (coloured frames with noise, tones): decoding cost depends on resolution,
frame rate and length far more than on content, but real footage compresses differently, so
treat the preprocessing figure as an estimate for RAVDESS.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from training.spec import DEVICES


def ravdess_name(i: int) -> str:
    """The i-th of 24 actors × 6 emotions × 2 statements × 2 repetitions, RAVDESS-style."""
    actor, emotion, rest = i % 24 + 1, ["03", "04", "05", "06", "07", "08"][i // 24 % 6], i // 144
    return f"Actor_{actor:02d}/01-01-{emotion}-01-{rest % 2 + 1:02d}-{rest // 2 % 2 + 1:02d}-{actor:02d}.mp4"


def make_ravdess_like(root: Path, n_clips: int, n_encoded: int = 24, seconds: float = 3.5) -> None:
    """`n_encoded` distinct clips, copied under further names up to `n_clips` (encoding 720p
    takes longer than decoding it; decoding a copy costs what decoding the original does)."""
    import av

    rng = np.random.default_rng(0)
    for i in range(n_encoded):
        path = root / ravdess_name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), mode="w") as output:
            video = output.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "23"})
            video.width, video.height, video.pix_fmt = 1280, 720, "yuv420p"
            audio = output.add_stream("aac", rate=48_000)
            audio.layout = "mono"
            base = rng.integers(0, 255, size=(720, 1280, 3), dtype=np.uint8)
            for index in range(int(seconds * 30)):
                frame = av.VideoFrame.from_ndarray(np.roll(base, index * 4, axis=1), format="rgb24")
                frame.pts = index
                output.mux(video.encode(frame))
            output.mux(video.encode())
            t = np.arange(int(seconds * 48_000)) / 48_000
            samples = (0.2 * np.sin(2 * np.pi * (200 + 100 * (i % 6)) * t)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48_000, start
                output.mux(audio.encode(frame))
            output.mux(audio.encode())
    for i in range(n_encoded, n_clips):
        (root / ravdess_name(i)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / ravdess_name(i % n_encoded), root / ravdess_name(i))


def preprocessing_rate(data_dir: Path, workers: int) -> tuple[float, int]:
    from training.audiovisual import catalog
    from training.audiovisual.catalog import VideoOptions

    shutil.rmtree(data_dir / "preprocessed", ignore_errors=True)
    options = VideoOptions(workers=workers)
    started = time.perf_counter()
    report = catalog.ensure_preprocessed("ravdess", data_dir, options)
    return report.n_clips / (time.perf_counter() - started), report.n_videos


def small_cnn_training_rate(data_dir: Path, device: str) -> tuple[float, str]:
    from training.spec import TrainSpec
    from training.train import TrainingCallback, train

    class Timer(TrainingCallback):
        def __init__(self):
            self.marks, self.info = [], None

        def on_start(self, info):
            self.info = info
            self.marks.append(time.perf_counter())

        def on_epoch_end(self, epoch, metrics):
            self.marks.append(time.perf_counter())

    timer = Timer()
    epochs = 3
    train(TrainSpec(dataset="ravdess", method="mle", missing_modality="visual", missing_rate=0.5, epochs=epochs,
                    encoder="small_cnn", batch_size=64, device=device), timer, data_dir=data_dir)
    seconds = timer.marks[-1] - timer.marks[1]  # epochs 2..N: the first one warms up
    return timer.info["n_train"] * (epochs - 1) / seconds, timer.info["device"]


def backbone_step_rate(name: str, device: str, batch: int = 16, steps: int = 3) -> float:
    import torch

    from training.methods import Batch, MaximumLikelihood, ReferenceInputs
    from training.prepare import ModalityInput
    from training.spec import TrainSpec
    from training.device import pick_device

    target = pick_device(device)
    spec = TrainSpec(dataset="ravdess", method="mle", missing_modality="visual", missing_rate=0.5, encoder=name)
    method = MaximumLikelihood(spec)
    frames = ModalityInput((3, 112, 112), torch.full((3,), 110.0), torch.full((3,), 60.0))
    spectrograms = ModalityInput((1, 64, 51), torch.tensor([-40.0]), torch.tensor([20.0]))
    model = method.build_model(spectrograms, frames, 6).to(target)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    log_prior = torch.full((6,), -np.log(6.0), device=target)
    generator = torch.Generator().manual_seed(0)
    data = Batch(torch.randn(batch, 1, 64, 51, generator=generator).mul(20).sub(40).half().to(target),
                 torch.randint(0, 255, (batch, 3, 112, 112), generator=generator, dtype=torch.uint8).to(target),
                 torch.arange(batch, device=target) % 6, torch.ones(batch, dtype=torch.bool, device=target),
                 torch.arange(batch, device=target) % 2 == 0)
    model.train()
    for step in range(steps + 1):
        if step == 1:
            if target.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss = method.loss(model, data, log_prior, ReferenceInputs())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if target.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=96, help="clips to preprocess (24 distinct ones, copied)")
    parser.add_argument("--backbones", nargs="*", default=["resnet34", "resnet50", "vgg16"])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args()
    if not 24 <= args.clips <= 576:
        parser.error("--clips: between 24 (for the 70/15/15 split) and 576 (distinct RAVDESS names)")

    from training.audiovisual.preprocess import default_workers

    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary) / "data"
        made = time.perf_counter()
        make_ravdess_like(data_dir / "ravdess", args.clips)
        print(f"made {args.clips} RAVDESS-like clips (1280×720 H.264 30 fps, AAC 48 kHz, 3.5 s; 24 distinct) in "
              f"{time.perf_counter() - made:.1f} s")
        cores = default_workers()
        one, _ = preprocessing_rate(data_dir, 1)
        print(f"preprocessing, 1 process:    {one:6.2f} clips/s")
        many, _ = preprocessing_rate(data_dir, cores)
        print(f"preprocessing, {cores} processes: {many:6.2f} clips/s  → RAVDESS's 1,152 clips in ~"
              f"{1152 / many / 60:.0f} min, eNTERFACE'05's 1,287 in ~{1287 / many / 60:.0f} min (these clips)")
        rate, device = small_cnn_training_rate(data_dir, args.device)
        print(f"training small_cnn end to end on {device}: {rate:7.1f} segments/s (a RAVDESS epoch, 24,192 "
              f"training segments: ~{24192 / rate / 60:.1f} min)")
    for name in args.backbones:
        rate = backbone_step_rate(name, args.device)
        print(f"training {name:9s} (steps only, batch 16, 112² frames): {rate:7.2f} segments/s")


if __name__ == "__main__":
    main()
