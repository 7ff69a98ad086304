"""Small file helpers shared by the command lines."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from helpers.errors import DataError


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
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def list_files(folder: str | os.PathLike, skip_hidden: bool = False) -> list[Path]:
    """Every file under ``folder``, sorted, following linked folders (a class folder may be a
    link) but listing each real folder once, so a link back up cannot loop. Links to nothing
    are listed too: whoever reads them reports them. ``skip_hidden`` leaves out names that
    start with a dot, and everything under such folders."""
    found, visited = [], set()
    for current, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()  # which of two links to one folder is listed must not vary
        if skip_hidden:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            names = [name for name in names if not name.startswith(".")]
        found += [Path(current) / name for name in names]
    return sorted(found)


# Files the study reads: an output that would replace one is refused.
_STUDY_FILES = {"split.csv", "split.json", "audit.json", "audit_index.csv"}


def check_output_path(path: str | os.PathLike, inputs: list[str | os.PathLike] = (),
                      input_folders: list[str | os.PathLike] = ()) -> Path:
    """``path`` as an output file, refused (DataError, before any work) when it is a folder,
    one of ``inputs`` or inside ``input_folders``, a model (``.keras``), a model's sidecar (a
    ``.json`` beside a ``.keras``) or an existing file of a run folder's ``data/``."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--out {path} is a folder: give the name of a file to write.")
    resolved = path.resolve()
    if any(resolved == Path(item).resolve() for item in inputs) or any(
            resolved.is_relative_to(Path(folder).resolve()) for folder in input_folders):
        raise DataError(f"--out {path} is one of the inputs: it would be overwritten.")
    if path.suffix == ".keras" or (path.suffix == ".json" and path.with_suffix(".keras").exists()):
        raise DataError(f"--out {path} would replace a model or the sidecar a model needs "
                        "to load: give another file name.")
    if path.name in _STUDY_FILES and path.exists():
        raise DataError(f"--out {path} would replace a file the study reads: give another "
                        "file name.")
    return path


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically (``write_text_atomically``)."""
    write_text_atomically(json.dumps(data, indent=2) + "\n", path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
