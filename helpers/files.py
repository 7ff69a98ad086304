"""Small file helpers shared by the command lines."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def write_text_atomically(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, creating the parent
    folder: a reader (or a kill mid-write) sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def copy_atomically(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a file through a temporary file and a rename (see ``write_text_atomically``)."""
    destination = Path(destination)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically (``write_text_atomically``)."""
    write_text_atomically(json.dumps(data, indent=2) + "\n", path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
