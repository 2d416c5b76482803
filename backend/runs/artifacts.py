"""A run's files (its checkpoint, and whatever else a worker writes for it) under
ARTIFACT_DIR/runs/<id>/, listed and served by the API. The requested path comes from the URL,
so it is resolved inside that directory or refused (training/paths.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.paths import PathOutsideRoot, inside

from ..settings import Settings

__all__ = ["Artifact", "PathOutsideRoot", "artifact_file", "list_artifacts", "run_artifact_dir"]


@dataclass
class Artifact:
    path: str  # relative to the run's directory, with '/'
    size: int


def run_artifact_dir(artifact_dir: Path, run_id: int) -> Path:
    """ARTIFACT_DIR/runs/<id>: the checkpoint a redelivered run resumes from, and its other files."""
    return inside(artifact_dir, f"runs/{int(run_id)}")


def _visible(path: Path, root: Path) -> bool:
    # Temporary files of an atomic write start with '.'; links are never followed out.
    relative = path.relative_to(root)
    return (path.is_file() and not path.is_symlink()
            and not any(part.startswith(".") for part in relative.parts))


def list_artifacts(settings: Settings, run_id: int) -> list[Artifact]:
    root = run_artifact_dir(settings.artifact_dir, run_id)
    if not root.is_dir():
        return []
    return [Artifact(path.relative_to(root).as_posix(), path.stat().st_size)
            for path in sorted(root.rglob("*")) if _visible(path, root)]


def artifact_file(settings: Settings, run_id: int, relative: str) -> Path:
    """The file, or PathOutsideRoot (the path leaves the run's directory) or FileNotFoundError."""
    root = run_artifact_dir(settings.artifact_dir, run_id)
    path = inside(root, relative)
    if not path.exists() or not _visible(path, root):
        raise FileNotFoundError(relative)
    return path
