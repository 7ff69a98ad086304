"""Find the folder that holds the class folders inside a download, however deeply nested."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.errors import DataLayoutError
from helpers.labels import CLASS_NAMES, canonical_label

# A folder counts as the data root when at least this many of its sub-folders name classes;
# one alone could be a coincidence ("platelet" inside some other project).
MIN_CLASS_FOLDERS = 2

# macOS zip archives mirror every folder under __MACOSX with metadata files only.
_SKIPPED_FOLDERS = {"__MACOSX"}


def _is_skipped(name: str) -> bool:
    return name.startswith(".") or name in _SKIPPED_FOLDERS


def find_data_root(path: str | os.PathLike) -> Path:
    """Return the shallowest folder under ``path`` whose sub-folders are the class folders.

    Raises DataLayoutError when none does, or several do equally well (two copies of the data).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataLayoutError(f"Data folder not found: {path}")
    candidates: list[tuple[int, Path]] = []
    for folder, subfolders, _ in os.walk(path):
        subfolders[:] = sorted(name for name in subfolders if not _is_skipped(name))
        n_classes = len({canonical_label(name) for name in subfolders} - {None})
        if n_classes >= MIN_CLASS_FOLDERS:
            candidates.append((n_classes, Path(folder)))
            subfolders[:] = []  # class folders are leaves of the search
    if not candidates:
        raise DataLayoutError(
            f"No class folders found under {path}. Expected sub-folders named "
            f"{', '.join(CLASS_NAMES)} (any case), as in the Kaggle download."
        )
    best = max(n for n, _ in candidates)
    roots = [folder for n, folder in candidates if n == best]
    if len(roots) > 1:
        listing = "\n  ".join(str(root) for root in roots)
        raise DataLayoutError(
            f"Several folders under {path} hold class folders:\n  {listing}\n"
            "Pass the one you want as the data folder."
        )
    return roots[0]


def class_folders(data_root: Path) -> dict[str, str]:
    """Map each sub-folder name of ``data_root`` that names a class to its canonical label."""
    return {
        entry.name: label
        for entry in sorted(data_root.iterdir())
        if entry.is_dir() and not _is_skipped(entry.name)
        and (label := canonical_label(entry.name)) is not None
    }
