"""Files that must survive a crash: written to a temporary file in the same folder, fsynced, renamed."""

from __future__ import annotations

import os
from typing import Callable


def atomic_write(path: str, write: Callable) -> None:
    """Write a file that must survive: `write(f)` fills a temporary binary file in the same folder, which is
    flushed, fsynced and renamed over `path`. A failure part-way leaves the previous file untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; best effort, some file systems refuse fsync on a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
