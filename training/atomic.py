"""Files written atomically, the one way every part of missmod writes a file another process may
read (checkpoints, decoded clips, extracted features, the artifact store's local folder): into a
temporary file beside the target (hidden, its name starting with '.'), flushed to disk, then
renamed over it. A crash mid-write leaves the previous file, or none, never half of one. Here in
the training library, the bottom layer, so that the backend writes the same way."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the block ends
    without an error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
