"""Log-Mel spectrograms of the segments' audio (paper §3.2), with librosa.

The spectrogram is computed once over the whole clip and each segment takes the frames
centred inside it, rather than one transform per segment: the numbers are those of the
segment's own audio except that its edge frames see the real neighbouring samples instead of
padding, and it costs one FFT pass per clip instead of 30 overlapping ones. Settings:
`PreprocessConfig` (64 bands, 25 ms window, 10 ms hop at 16 kHz by default).
"""

from __future__ import annotations

import numpy as np

from .config import PreprocessConfig


def log_mel(audio: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(n_mels, 1 + len(audio) // hop) in dB; frame j is centred on sample j·hop."""
    import librosa

    power = librosa.feature.melspectrogram(
        y=np.asarray(audio, dtype=np.float32), sr=config.sample_rate, n_fft=config.n_fft,
        win_length=config.win_length, hop_length=config.hop_length, window="hann", center=True,
        n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax, power=2.0,
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def segment_spectrograms(spectrogram: np.ndarray, starts: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(S, 1, n_mels, T) float16: for each segment start (seconds from the audio's first
    sample), the T frames centred from the start to the end of the segment."""
    width = config.spectrogram_frames
    if spectrogram.shape[1] < width:
        raise ValueError(f"{spectrogram.shape[1]} spectrogram frames, a segment needs {width}")
    first = np.rint(np.asarray(starts) * config.sample_rate / config.hop_length).astype(int)
    first = np.clip(first, 0, spectrogram.shape[1] - width)
    windows = np.stack([spectrogram[:, j : j + width] for j in first])
    return windows[:, None].astype(np.float16)
