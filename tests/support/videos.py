"""Tiny real videos made with PyAV, laid out like RAVDESS and eNTERFACE'05, for the tests.

Each class has its own colour and its own tone, so a model can learn the classes from either
modality: the frames are a flat colour (with a moving bar, so consecutive frames differ) and
the audio is a sine at the class's frequency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200), (40, 210, 210)]
TONES = [300.0, 600.0, 1000.0, 1600.0, 2400.0, 3400.0]  # Hz, one per class (paper order of CLASSES)


def make_clip(path: Path, colour, tone: float, seconds: float = 2.0, *, container: str = "mp4", fps: int = 25,
              size: tuple[int, int] = (48, 36), sample_rate: int = 48_000, audio: bool = True,
              video: bool = True) -> Path:
    """Write a clip: H.264 + AAC in .mp4, or MPEG-4 part 2 + PCM in .avi."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    video_codec, audio_codec = ("libx264", "aac") if container == "mp4" else ("mpeg4", "pcm_s16le")
    width, height = size
    with av.open(str(path), mode="w", format=container) as output:
        video_stream = audio_stream = None
        if video:
            video_stream = output.add_stream(video_codec, rate=fps)
            video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
        if audio:
            audio_stream = output.add_stream(audio_codec, rate=sample_rate)
            audio_stream.layout = "mono"
        if video_stream is not None:
            for index in range(int(round(seconds * fps))):
                image = np.empty((height, width, 3), np.uint8)
                image[:] = colour
                image[:, (index * 3) % width] = 255
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                output.mux(video_stream.encode(frame))
            output.mux(video_stream.encode())
        if audio_stream is not None:
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            samples = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            sample_format = audio_stream.format.name
            step = audio_stream.codec_context.frame_size or 1024
            for start in range(0, len(samples), step):
                chunk = samples[None, start : start + step]
                if sample_format.startswith("s16"):
                    chunk = (chunk * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(chunk, format=sample_format, layout="mono")
                frame.sample_rate, frame.pts = sample_rate, start
                output.mux(audio_stream.encode(frame))
            output.mux(audio_stream.encode())
    return path


RAVDESS_CODES = {0: "05", 1: "07", 2: "06", 3: "03", 4: "04", 5: "08"}  # class index → emotion code


def ravdess_tree(root: Path, actors=(1, 2, 3), per_actor: int = 1, seconds: float = 2.0, **clip) -> dict[str, int]:
    """Actor_XX/01-01-EE-II-SS-RR-AA.mp4 for the six classes, plus files discovery must skip.
    Returns {video id: class index} of the clips that must be found."""
    expected = {}
    for actor in actors:
        folder = root / f"Actor_{actor:02d}"
        for label, code in RAVDESS_CODES.items():
            for repetition in range(1, per_actor + 1):
                name = f"01-01-{code}-01-01-{repetition:02d}-{actor:02d}.mp4"
                make_clip(folder / name, COLOURS[label], TONES[label], seconds, **clip)
                expected[f"Actor_{actor:02d}/{name}"] = label
        # Not the paper's data: neutral, calm, song, video-only, audio-only.
        for name in (f"01-01-01-01-01-01-{actor:02d}.mp4", f"01-01-02-01-01-01-{actor:02d}.mp4",
                     f"01-02-03-01-01-01-{actor:02d}.mp4", f"02-01-03-01-01-01-{actor:02d}.mp4"):
            make_clip(folder / name, (128, 128, 128), 440.0, 1.0, size=(32, 24))
        (folder / f"03-01-03-01-01-01-{actor:02d}.wav").write_bytes(b"RIFF")
    (root / "README.txt").write_text("RAVDESS")
    return expected


ENTERFACE_EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")


def enterface_tree(root: Path, subjects=(1, 2, 3), sentences=(1,), seconds: float = 2.0, **clip) -> dict[str, int]:
    """subject N/<emotion>/sentence K/sN_xx_K.avi with the archive's irregularities: a subject
    whose files carry another number, a sentence folder without a space, stray files."""
    expected = {}
    for subject in subjects:
        for label, emotion in enumerate(ENTERFACE_EMOTIONS):
            for sentence in sentences:
                number = subject + 10 if subject == subjects[-1] else subject  # files named after another subject
                sentence_folder = f"sentence {sentence}" if subject != subjects[0] else f"sentence{sentence}"
                relative = Path(f"subject {subject}", emotion, sentence_folder, f"s{number}_{emotion[:2]}_{sentence}.avi")
                make_clip(root / relative, COLOURS[label], TONES[label], seconds, container="avi", **clip)
                expected[relative.as_posix()] = label
    stray = root / f"subject {subjects[0]}" / "anger"
    (stray / "Thumbs.db").write_bytes(b"\0" * 16)
    (stray / "._s1_an_1.avi").write_bytes(b"\0" * 16)  # macOS companion file
    (root / "readme.txt").write_text("eNTERFACE'05")
    return expected


def ravdess_copies(root: Path, actors=range(1, 25), seconds: float = 4.0) -> int:
    """Many RAVDESS clips made cheaply, for jobs that must last a few seconds: the six clips of
    Actor_01 are made once and copied under every other actor's names (a copy costs nothing to
    make and as much as any clip to preprocess). Returns the number of clips."""
    import shutil

    first, *others = actors
    made = [make_clip(root / f"Actor_{first:02d}" / f"01-01-{code}-01-01-01-{first:02d}.mp4", COLOURS[label],
                      TONES[label], seconds) for label, code in RAVDESS_CODES.items()]
    for actor in others:
        (root / f"Actor_{actor:02d}").mkdir(parents=True, exist_ok=True)
        for clip in made:
            shutil.copyfile(clip, root / f"Actor_{actor:02d}" / f"{clip.stem[:-2]}{actor:02d}.mp4")
    return len(made) * len(actors)
