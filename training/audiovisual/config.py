"""The preprocessing settings (paper §3.2) and the cache key they give.

The paper fixes 30 segments of 0.5 s per clip, the central frame of each as the visual input
and "the log Mel-spectrogram of each segment" as the audio input. What it leaves open is
chosen here, and every value is part of the cache key, so changing one never mixes results:

- frames: the largest centred square of the frame, resized to `frame_size`² (default 112:
  RAVDESS's 1,152 clips × 30 segments take 1.3 GB as uint8; 224 would take 5.2 GB);
- audio: mixed to mono and resampled to 16 kHz (speech carries little above 8 kHz), then a
  power Mel spectrogram with 64 bands up to 8 kHz, a 25 ms Hann window (400 samples, FFT of
  512) every 10 ms, in decibels (10·log10, floor 1e-10, no per-clip clipping). A segment's
  spectrogram is the 51 frames centred from its start to its end (0.5 s / 10 ms + 1), shape
  (1, 64, 51), stored as float16.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bump when the preprocessing code changes what it writes: old caches are then not reused.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    n_segments: int = 30
    segment_seconds: float = 0.5
    frame_size: int = 112
    sample_rate: int = 16_000
    n_mels: int = 64
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    n_fft: int = 512
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2

    def __post_init__(self):
        if self.n_segments < 1 or self.segment_seconds <= 0 or self.frame_size < 8 or self.n_mels < 1:
            raise ValueError(f"invalid preprocessing settings: {self}")
        if self.win_length > self.n_fft:
            raise ValueError(f"a {self.window_seconds * 1000:g} ms window is {self.win_length} samples, longer than "
                             f"n_fft {self.n_fft}")

    @property
    def win_length(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate))

    @property
    def spectrogram_frames(self) -> int:
        """Frames of one segment's spectrogram: those centred from its start to its end."""
        return int(round(self.segment_seconds * self.sample_rate / self.hop_length)) + 1

    @property
    def visual_shape(self) -> tuple[int, int, int]:
        return (3, self.frame_size, self.frame_size)

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.spectrogram_frames)

    def key(self) -> str:
        """Short hash of every setting and the format version: the cache folder's suffix."""
        text = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def describe(self) -> dict:
        return {**asdict(self), "win_length": self.win_length, "hop_length": self.hop_length,
                "visual_shape": list(self.visual_shape), "audio_shape": list(self.audio_shape)}
