"""Paths that come from outside (a request, a spec, a file name in a dataset folder) are
resolved inside their root directory or refused: no absolute paths, no `..`, and no symbolic
link that leads out of the root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class PathOutsideRoot(ValueError):
    """The path would leave its root directory."""


def inside(root: Path, relative: str | PurePosixPath) -> Path:
    """`root / relative`, refused (PathOutsideRoot) when `relative` is absolute, climbs with
    `..`, holds a NUL or a backslash, or resolves (following links) to a place outside `root`.
    The path need not exist."""
    text = str(relative)
    if not text or "\x00" in text or "\\" in text:
        raise PathOutsideRoot(f"not a relative path: {text!r}")
    parts = PurePosixPath(text)
    if parts.is_absolute() or ".." in parts.parts:
        raise PathOutsideRoot(f"not a relative path inside the directory: {text!r}")
    root = Path(root).resolve()
    resolved = (root / parts).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise PathOutsideRoot(f"{text!r} leads out of the directory")
    return resolved
