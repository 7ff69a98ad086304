"""Which files a process read, from their access times: a file's access time is set back
behind its modification time, so the next read moves it forward (ext4's default
``relatime`` does so; ``noatime`` never does, which ``reads_are_recorded`` tells)."""

from __future__ import annotations

import os
from pathlib import Path


def stamp(paths: list[Path]) -> dict[Path, int]:
    """Set each file's access time a second behind its modification time; returns them."""
    stamped = {}
    for path in paths:
        status = path.stat()
        os.utime(path, ns=(status.st_mtime_ns - 10**9, status.st_mtime_ns))
        stamped[path] = path.stat().st_atime_ns
    return stamped


def read_since(stamped: dict[Path, int]) -> list[Path]:
    """The files of ``stamp`` read since (their access time moved)."""
    return [path for path, atime in stamped.items() if path.stat().st_atime_ns != atime]


def reads_are_recorded(path: Path) -> bool:
    """Whether this filesystem records a read of ``path`` (stamped again after)."""
    stamped = stamp([path])
    path.read_bytes()
    recorded = bool(read_since(stamped))
    stamp([path])
    return recorded
