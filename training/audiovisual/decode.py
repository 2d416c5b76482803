"""One clip → its segments (paper §3.2), decoded with PyAV (FFmpeg).

The clip spans the time where both its video and its audio exist. Its `n_segments` windows of
`segment_seconds` are evenly spaced from the clip's start to its end (first window at the
start, last one ending at the end), so they overlap when the clip is shorter than
n_segments × segment_seconds (RAVDESS and eNTERFACE'05 clips last 3–6 s; 30 × 0.5 s = 15 s).
A segment's visual input is the frame on screen at its centre (the last frame whose
timestamp is at or before it); its audio input is its log-Mel spectrogram (logmel.py).

A clip that cannot be used raises ClipError with a reason meant for the preprocessing report:
unreadable, no video stream, no audio stream, or shorter than one segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PreprocessConfig
from .logmel import log_mel, segment_spectrograms


class ClipError(Exception):
    """A clip that is skipped; str() is the reason shown in the report."""


@dataclass
class SegmentedClip:
    visual: np.ndarray  # (S, 3, H, W) uint8
    audio: np.ndarray  # (S, 1, n_mels, T) float16
    starts: np.ndarray  # (S,) seconds from the clip's start
    duration: float  # seconds where both audio and video exist


def segment_starts(duration: float, config: PreprocessConfig) -> np.ndarray:
    return np.linspace(0.0, duration - config.segment_seconds, config.n_segments)


def _frames_at(times: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each moment (the first frame before the video starts)."""
    return np.clip(np.searchsorted(times, moments, side="right") - 1, 0, len(times) - 1)


def _square_rgb(frame, size: int) -> np.ndarray:
    """The centred square of a decoded frame, resized to size × size, as (3, size, size) uint8.
    FFmpeg's swscale scales (area averaging when shrinking); numpy crops."""
    scale = size / min(frame.width, frame.height)
    width, height = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size].transpose(2, 0, 1))


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise ClipError(f"unreadable: {error}") from None


def _time(frame, index: int, rate: float | None) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / rate if rate else float(index)


def _estimated_span(container, video, audio) -> float | None:
    import av

    if container.duration:
        return container.duration / av.time_base
    durations = [float(s.duration * s.time_base) for s in (video, audio) if s.duration and s.time_base]
    return min(durations) if durations else None


def read_clip(path: Path, config: PreprocessConfig) -> SegmentedClip:
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise ClipError("no video stream")
        if not container.streams.audio:
            raise ClipError("no audio stream")
        video, audio = container.streams.video[0], container.streams.audio[0]
        rate = float(video.average_rate) if video.average_rate else None
        # Frames are picked during the one decoding pass using the duration the container
        # announces; if the decoded duration turns out different, a second pass re-picks them.
        estimate = _estimated_span(container, video, audio)
        guessed_moments = (segment_starts(estimate, config) + config.segment_seconds / 2
                           if estimate and estimate >= config.segment_seconds else np.array([]))
        picked: dict[int, np.ndarray] = {}
        times: list[float] = []
        pending = 0  # next guessed moment to serve
        previous = None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=config.sample_rate)
        chunks: list[np.ndarray] = []
        audio_start = None
        try:
            for packet in container.demux(video, audio):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        moment = _time(frame, len(times), rate)
                        while pending < len(guessed_moments) and guessed_moments[pending] < moment:
                            index, chosen = (len(times) - 1, previous) if previous is not None else (len(times), frame)
                            if index not in picked:
                                picked[index] = _square_rgb(chosen, config.frame_size)
                            pending += 1
                        times.append(moment)
                        previous = frame
                    else:
                        if audio_start is None:
                            audio_start = float(frame.time) if frame.time is not None else 0.0
                        chunks.extend(r.to_ndarray()[0] for r in resampler.resample(frame))
            chunks.extend(r.to_ndarray()[0] for r in resampler.resample(None))
        except av.error.FFmpegError as error:
            raise ClipError(f"unreadable: {error}") from None
        if not times:
            raise ClipError("no video frame could be decoded")
        if previous is not None and pending < len(guessed_moments) and len(times) - 1 not in picked:
            picked[len(times) - 1] = _square_rgb(previous, config.frame_size)

    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise ClipError("the audio stream holds no samples")
    times_array = np.asarray(times)
    frame_step = float(np.median(np.diff(times_array))) if len(times) > 1 else (1 / rate if rate else 0.04)
    start = max(times_array[0], audio_start)
    end = min(times_array[-1] + frame_step, audio_start + len(samples) / config.sample_rate)
    duration = end - start
    if duration < config.segment_seconds:
        raise ClipError(f"too short: {max(duration, 0):.2f} s with both audio and video, "
                        f"a segment lasts {config.segment_seconds:g} s")

    starts = segment_starts(duration, config)
    wanted = _frames_at(times_array, start + starts + config.segment_seconds / 2)
    missing = sorted(set(wanted.tolist()) - set(picked))
    if missing:
        picked.update(_decode_frames(path, missing, rate, config))
    visual = np.stack([picked[i] for i in wanted])
    spectrogram = log_mel(samples, config)
    audio_segments = segment_spectrograms(spectrogram, start - audio_start + starts, config)
    return SegmentedClip(visual=visual, audio=audio_segments, starts=starts.astype(np.float32),
                         duration=float(duration))


def _decode_frames(path: Path, indices: list[int], rate: float | None, config: PreprocessConfig) -> dict[int, np.ndarray]:
    """The frames at these positions (decode order = presentation order), from a second pass."""
    import av

    wanted, found = set(indices), {}
    with _open(path) as container:
        try:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    found[index] = _square_rgb(frame, config.frame_size)
                    if len(found) == len(wanted):
                        break
        except av.error.FFmpegError as error:
            raise ClipError(f"unreadable: {error}") from None
    if len(found) < len(wanted):
        raise ClipError("the video's frames changed between two decoding passes")
    return found
