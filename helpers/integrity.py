"""The images a run reads are the images its split recorded.

The split keeps each image's size and modification time (``split_files.csv``). Every reader
(``RunFolder.load_split``) stats each image, hashes only those whose size or time differs,
and lists the data folder for images the split never saw; a changed, missing or added image
is named and the run refuses. The data folder is recorded absolutely and relative to the run
folder, so a run folder holding its data can move (docs/guarantees.md).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from helpers import files
from helpers.errors import REMAKE_SPLIT, DataError, StaleSplitError
from helpers.locate import class_folders

STATUS_COLUMNS = ["path", "bytes", "mtime_ns"]
# How many named files a refusal shows of each kind.
EXAMPLES = 5


def status_path(split_csv: str | os.PathLike) -> Path:
    """The CSV beside a split that records each image's size and modification time."""
    split_csv = Path(split_csv)
    return split_csv.with_name(f"{split_csv.stem}_files.csv")


def file_status(data_root: Path, paths: list[str]) -> pd.DataFrame:
    """Size and modification time (ns) of each path under ``data_root``; -1 where a file
    cannot be read."""
    rows = []
    for path in paths:
        try:
            status = (data_root / path).stat()
            rows.append((path, status.st_size, status.st_mtime_ns))
        except OSError:
            rows.append((path, -1, -1))
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def write_status(status: pd.DataFrame, split_csv: str | os.PathLike) -> None:
    """Record the split's images' sizes and times (STATUS_COLUMNS), atomically: those the
    audit took before hashing them, or those ``changes`` took before hashing them again."""
    files.write_text_atomically(status.to_csv(index=False, lineterminator="\n"),
                                status_path(split_csv))


def _run_folder(split_csv: str | os.PathLike) -> Path:
    """The folder a relative data root is relative to: the run folder, for a run's split
    (``RUN/data/split.csv``)."""
    return Path(split_csv).parent.parent


def data_root_record(data_root: str | os.PathLike, split_csv: str | os.PathLike) -> dict:
    """The keys of split.json that say where the images are: absolute, and relative to the
    run folder (with which it moves when it lies inside it)."""
    absolute = Path(data_root).resolve()
    folder = _run_folder(split_csv).resolve()
    return {"data_root": str(absolute),
            "data_root_relative": Path(os.path.relpath(absolute, folder)).as_posix()}


def locate_data_root(metadata: dict, split_csv: str | os.PathLike) -> Path:
    """Where the split's images are now.

    A data folder inside the run folder is looked for where it lies relative to the split
    (the run folder may have moved); one outside at its absolute path, then relative. Raises
    DataError when neither exists, saying how to give the folder again.
    """
    folder = _run_folder(split_csv)
    absolute = Path(metadata["data_root"])
    relative = metadata.get("data_root_relative")
    candidates = [absolute]
    if isinstance(relative, str):
        inside = relative != ".." and not relative.startswith("../")
        candidates = [folder / relative, absolute] if inside else [absolute, folder / relative]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"The images of the split {split_csv} are no longer at {absolute}: the data folder "
        "(or the run folder that holds it) was moved or removed. Give the data folder's new "
        "place to notebook 01 (DATA_DIR, or --data-dir with python -m helpers.study): it "
        "reuses this split when the images are the same, and records their new place. "
        "Synthetic images are drawn again by notebook 01: rerun it (--force with python -m "
        "helpers.study).")


def _examples(paths: list[str]) -> str:
    shown = ", ".join(files.terminal_text(path) for path in paths[:EXAMPLES])
    return shown + (f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else "")


def _is_image(path: Path) -> bool:
    """Whether a file's header is that of an image (what the audit would consider); a FIFO,
    device or link to nothing is never opened."""
    if files.file_kind(path) != "regular file":
        return False
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError):
        return False


def changes(split_frame: pd.DataFrame, known_paths: set[str], data_root: Path,
            split_csv: str | os.PathLike) -> list[str]:
    """How the images under ``data_root`` differ from the split: one line per kind (missing,
    changed content, added in a class folder), each naming files; empty when they agree.

    ``known_paths``: every file the split's audit saw (split and excluded), so only files it
    never saw count as added. Files whose size or time differs from the record but whose
    content is the same (a copy, a touch) are accepted and their record refreshed.
    """
    recorded_file = status_path(split_csv)
    paths = split_frame["path"].tolist()
    now = file_status(data_root, paths)
    try:
        recorded = pd.read_csv(recorded_file, dtype={"path": str}, keep_default_na=False)
        if list(recorded.columns) != STATUS_COLUMNS:
            raise ValueError(recorded_file)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        recorded = now.iloc[0:0]  # no record (a split of an earlier version): hash them all
    merged = now.merge(recorded, on="path", how="left", suffixes=("", "_recorded"))
    missing = merged.loc[merged["bytes"] < 0, "path"].tolist()
    differs = merged[(merged["bytes"] >= 0) & ((merged["bytes"] != merged["bytes_recorded"])
                                               | (merged["mtime_ns"]
                                                  != merged["mtime_ns_recorded"]))]
    expected = split_frame.set_index("path")["sha256"]
    changed = []
    for path in differs["path"]:
        try:  # a FIFO or device in an image's place is changed, and never opened
            same = (files.file_kind(data_root / path) == "regular file"
                    and files.file_sha256(data_root / path) == expected[path])
        except OSError:
            same = False
        if not same:
            changed.append(path)
    if len(differs) and not changed and not missing:
        # Same content: next time a stat suffices. A run folder one may read but not write
        # keeps the old record, which only saves time.
        with contextlib.suppress(files.OutputError):
            write_status(now, split_csv)  # the sizes and times just read

    labels = class_folders(data_root)
    added = []
    for path in files.list_files(data_root):
        relative = path.relative_to(data_root)
        name = files.display_name(relative.as_posix())
        if name in known_paths or len(relative.parts) < 2 or relative.parts[0] not in labels:
            continue
        if _is_image(path):
            added.append(name)

    notes = []
    for what, listed in [("missing (removed, renamed or unreadable)", missing),
                         ("changed since the split (other content under the same name)",
                          changed),
                         ("added to the class folders after the split (the split would "
                          "leave them out)", added)]:
        if listed:
            notes.append(f"{len(listed)} image file(s) {what}: {_examples(listed)}")
    return notes


def check_images(split_frame: pd.DataFrame, metadata: dict, data_root: Path,
                 split_csv: str | os.PathLike) -> None:
    """Raise StaleSplitError naming the files when the images under ``data_root`` are not the
    ones the split recorded (``changes``); ``metadata``: split.json, whose ``excluded`` lists
    the files the split left out on purpose."""
    excluded = metadata.get("excluded") or []
    known = set(split_frame["path"]) | {row.get("path") for row in excluded
                                        if isinstance(row, dict)}
    notes = changes(split_frame, known, data_root, split_csv)
    if notes:
        raise StaleSplitError(
            f"The images in {files.terminal_text(str(data_root))} are not the ones the split "
            f"{split_csv} recorded:\n  - " + "\n  - ".join(notes) + "\nResults would be "
            "computed on other images than the split's. Restore the files as they were, or: "
            f"{REMAKE_SPLIT}")


def read_metadata(split_csv: str | os.PathLike) -> dict:
    """split.json beside ``split_csv``; DataError when missing or damaged."""
    metadata_file = Path(split_csv).with_suffix(".json")
    try:
        metadata = files.read_json(metadata_file)
        if not isinstance(metadata, dict) or not isinstance(metadata["data_root"], str):
            raise TypeError("no data_root")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{metadata_file} is missing or damaged ({error!r}): make the split "
                        "again with notebook 01.") from None
    return metadata
