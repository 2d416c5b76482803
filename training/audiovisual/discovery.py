"""Finding the clips of RAVDESS and eNTERFACE'05 in the folders their archives unpack to
(paper §3.1), with their label, subject and a stable video id. Standard library only: the
API lists the datasets with this, without decoding anything.

Both datasets get the paper's six classes, named alike so results compare across them:
anger, disgust, fear, happiness, sadness, surprise.

RAVDESS (Livingstone & Russo 2018): `Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4`. Kept: modality 01
(audio-video), vocal channel 01 (speech), emotion 03 happy, 04 sad, 05 angry, 06 fearful,
07 disgust, 08 surprised; the subject is the actor AA. Skipped: audio-only (03-) and
video-only (02-) files, song (channel 02), neutral (01) and calm (02). Files are found at
any depth, so `ravdess/Video_Speech_Actor_01/Actor_01/…` (one folder per unpacked zip) works.

eNTERFACE'05 (Martin et al. 2006): `subject N/<emotion>/sentence K/*.avi`. The label comes
from the emotion folder and the subject from the `subject N` folder, never from file names,
which are irregular in the distributed archive (a subject folder whose files carry another
subject's number, stray spellings). Folder names are matched ignoring case, spaces and
underscores; a missing `sentence K` level is tolerated; hidden files and macOS `._*`
companions are ignored.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")

RAVDESS_EMOTIONS = {"05": "anger", "07": "disgust", "06": "fear", "03": "happiness", "04": "sadness",
                    "08": "surprise"}
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.(\w+)$")
ENTERFACE_SUBJECT = re.compile(r"^subject[\s_]*(\d+)$", re.IGNORECASE)


class DiscoveryError(ValueError):
    """The folder does not hold the dataset's layout; the message says what was expected and found."""


@dataclass(frozen=True)
class Clip:
    path: Path
    video: str  # id: the path relative to the dataset's root, with forward slashes
    label: int  # index into CLASSES
    subject: str


@dataclass(frozen=True)
class Discovery:
    dataset: str
    root: Path
    clips: tuple[Clip, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason → number of files skipped

    @property
    def class_counts(self) -> tuple[int, ...]:
        counts = Counter(clip.label for clip in self.clips)
        return tuple(counts.get(k, 0) for k in range(len(CLASSES)))

    @property
    def subjects(self) -> list[str]:
        return sorted({clip.subject for clip in self.clips})


def _visible_files(root: Path):
    """(folder parts relative to root, file name) of every non-hidden file, sorted."""
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        relative = Path(directory).relative_to(root).parts
        for name in sorted(files):
            if not name.startswith("."):
                yield relative, name


def _what_is_there(root: Path) -> str:
    entries = sorted(root.iterdir(), key=lambda p: p.name) if root.is_dir() else []
    if not entries:
        return "an empty folder"
    shown = [f"{p.name}/" if p.is_dir() else p.name for p in entries[:6]]
    more = f", … ({len(entries)} entries)" if len(entries) > 6 else ""
    return ", ".join(shown) + more


def _looks_like_enterface(root: Path) -> bool:
    return any(ENTERFACE_SUBJECT.match(part) for parts, _ in _first_files(root) for part in parts)


def _looks_like_ravdess(root: Path) -> bool:
    return any(RAVDESS_NAME.match(name) for _, name in _first_files(root))


def _first_files(root: Path, limit: int = 200):
    for count, item in enumerate(_visible_files(root)):
        if count >= limit:
            return
        yield item


def _video_id(parts: tuple[str, ...], name: str) -> str:
    return "/".join((*parts, name))


def discover_ravdess(root: Path) -> Discovery:
    root = Path(root)
    clips, skipped = [], Counter()
    seen: set[str] = set()
    for parts, name in _visible_files(root):
        match = RAVDESS_NAME.match(name)
        if not match:
            skipped["not a RAVDESS file name"] += 1
            continue
        modality, channel, emotion, _, _, _, actor = match.groups()[:7]
        extension = match.group(8).lower()
        if modality != "01" or extension != "mp4":
            skipped["not audio-video (01-…mp4)"] += 1
        elif channel != "01":
            skipped["song, not speech"] += 1
        elif emotion not in RAVDESS_EMOTIONS:
            skipped["neutral or calm"] += 1
        elif name in seen:  # the same clip unpacked twice (two copies of one actor's zip)
            skipped["duplicate file name"] += 1
        else:
            seen.add(name)
            clips.append(Clip(root.joinpath(*parts, name), _video_id(parts, name),
                              CLASSES.index(RAVDESS_EMOTIONS[emotion]), actor))
    if not clips:
        hint = ""
        if _looks_like_enterface(root):
            hint = " It looks like eNTERFACE'05's layout (subject N folders): that dataset goes in enterface05/."
        elif set(skipped) - {"not a RAVDESS file name"}:
            hint = (" RAVDESS files are there but none is an audio-video speech clip of the six emotions: the "
                    "clips are in the Video_Speech_Actor_XX.zip archives (01-01-…mp4).")
        raise DiscoveryError(
            f"expected RAVDESS's layout in {root}: Actor_01 … Actor_24 folders of MM-VV-EE-II-SS-RR-AA.mp4 clips "
            f"(audio-video speech 01-01-EE-…, emotions 03–08); found {_what_is_there(root)}, with no such clip.{hint}")
    return Discovery("ravdess", root, tuple(clips), dict(skipped))


def _emotion(folder: str) -> str | None:
    name = re.sub(r"[\s_]+", "", folder).lower()
    return name if name in CLASSES else None


def discover_enterface(root: Path) -> Discovery:
    root = Path(root)
    clips, skipped = [], Counter()
    for parts, name in _visible_files(root):
        if not name.lower().endswith(".avi"):
            skipped["not an .avi file"] += 1
            continue
        subject_at = next((i for i, part in enumerate(parts) if ENTERFACE_SUBJECT.match(part.strip())), None)
        if subject_at is None or subject_at + 1 >= len(parts):
            skipped["not under subject N/<emotion>/"] += 1
            continue
        emotion = _emotion(parts[subject_at + 1])
        below = parts[subject_at + 2:]
        if emotion is None or len(below) > 1:
            skipped["not under subject N/<emotion>/sentence K/"] += 1
            continue
        subject = str(int(ENTERFACE_SUBJECT.match(parts[subject_at].strip()).group(1)))
        clips.append(Clip(root.joinpath(*parts, name), _video_id(parts, name), CLASSES.index(emotion), subject))
    if not clips:
        hint = ""
        if _looks_like_ravdess(root):
            hint = " It looks like RAVDESS's layout (MM-VV-EE-… file names): that dataset goes in ravdess/."
        raise DiscoveryError(
            f"expected eNTERFACE'05's layout in {root}: 'subject N/<{'|'.join(CLASSES)}>/sentence K/*.avi'; "
            f"found {_what_is_there(root)}, with no such clip.{hint}")
    return Discovery("enterface05", root, tuple(clips), dict(skipped))


DISCOVER = {"ravdess": discover_ravdess, "enterface05": discover_enterface}
