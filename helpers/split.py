"""A stratified, reproducible train/validation/test split, saved as CSV, with no image in
two subsets.

Duplicates are removed by content first (the same decoded pixels: byte-identical files, or
one image saved in two lossless formats); content under two classes is left out. An image
re-encoded with loss (another JPEG quality, a resize) is another content and is not found.
Every file of the audit ends either in the split or in the exclusion report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import files, integrity
from helpers.audit import AuditResult, usable_mask
from helpers.errors import REMAKE_SPLIT, DataError, StaleSplitError
from helpers.labels import CLASS_NAMES

SPLIT_NAMES = ("train", "validation", "test")
# The default; notebook 1's SPLIT_FRACTIONS passes the study's own.
SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}

SPLIT_COLUMNS = ["path", "label", "sha256", "split"]
DEFAULT_SEED = 42


@dataclass
class SplitResult:
    """The split (SPLIT_COLUMNS, one row per image) and the files left out with reasons."""

    split: pd.DataFrame
    excluded: pd.DataFrame  # columns path, label, reason
    reused: bool = False


# The reasons select_images gives, which the commands that count them read back.
DUPLICATE_OF = "duplicate of "  # followed by the kept file's path
UNDER_TWO_CLASSES = "same content under two classes: label unknown"


def select_images(index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an audit index into images to use (one per content) and excluded files (with a
    reason)."""
    usable = usable_mask(index)
    unusable = index[~usable]
    excluded = [unusable[["path", "label"]].assign(
        reason=unusable["problem"].where(unusable["label"] != "", "outside the class folders"))]
    images = index.loc[usable, ["path", "label", "sha256", "pixels_sha256"]].sort_values("path")

    labels_per_content = images.groupby("pixels_sha256")["label"].transform("nunique")
    conflicts = images[labels_per_content > 1]
    excluded.append(conflicts[["path", "label"]].assign(
        reason=UNDER_TWO_CLASSES))
    images = images[labels_per_content == 1]

    repeated = images.duplicated("pixels_sha256", keep="first")  # keeps the first path in order
    first_path = images.drop_duplicates("pixels_sha256").set_index("pixels_sha256")["path"]
    copies = images[repeated]
    # Built per row: pandas 2.2 maps an empty column to float64, which no text adds to.
    excluded.append(copies[["path", "label"]].assign(
        reason=[DUPLICATE_OF + first_path[content] for content in copies["pixels_sha256"]]))
    kept = images[~repeated].drop(columns="pixels_sha256").reset_index(drop=True)
    return kept, pd.concat(excluded, ignore_index=True).sort_values("path", ignore_index=True)


def no_usable_image(root: str | os.PathLike, reasons: list[tuple[str, str]]) -> DataError:
    """The error for a folder with no usable image, naming the first files left out and why
    (nothing has been written yet that would list them)."""
    named = "; ".join(f"{files.terminal_text(path)}: {reason}" for path, reason in reasons[:5])
    return DataError(f"No usable image in the class folders under {root}: {len(reasons)} "
                     f"file(s), none a readable image in a class folder"
                     + (f" ({named}{'; ...' if len(reasons) > 5 else ''})" if named else "")
                     + ".")


def fractions_problem(fractions: object) -> str | None:
    """What is wrong with SPLIT_FRACTIONS, or None."""
    if (isinstance(fractions, dict) and set(fractions) == set(SPLIT_NAMES)
            and all(isinstance(value, int | float) and not isinstance(value, bool)
                    and 0 < value < 1 for value in fractions.values())
            and abs(sum(fractions.values()) - 1) <= 1e-9):
        return None
    return (f"must give train, validation and test each a share above 0, together 1, such "
            f"as {SPLIT_FRACTIONS}; got {fractions!r}")


def check_fractions(fractions: object) -> dict[str, float]:
    """``fractions`` checked (each above 0, together 1); DataError naming SPLIT_FRACTIONS."""
    problem = fractions_problem(fractions)
    if problem:
        raise DataError(f"SPLIT_FRACTIONS {problem}.")
    return {name: float(fractions[name]) for name in SPLIT_NAMES}


def assign_splits(images: pd.DataFrame, seed: int = DEFAULT_SEED,
                  fractions: dict[str, float] = SPLIT_FRACTIONS) -> pd.DataFrame:
    """Assign each image to train/validation/test in ``fractions``, stratified by class.

    Images are ordered by content hash before the seeded shuffle, so the result depends on
    the data and the seed only, never on the file system's listing order.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for label in CLASS_NAMES:
        members = images[images["label"] == label].sort_values("sha256")
        order = rng.permutation(len(members))
        n_train = int(np.floor(fractions["train"] * len(members) + 0.5))
        n_validation = int(np.floor(fractions["validation"] * len(members) + 0.5))
        names = np.array(["test"] * len(members), dtype=object)
        names[order[:n_train]] = "train"
        names[order[n_train:n_train + n_validation]] = "validation"
        parts.append(members.assign(split=names))
    split = pd.concat(parts) if parts else images.assign(split=[])
    return split[SPLIT_COLUMNS].sort_values("path", ignore_index=True)


def metadata_path(split_csv: Path) -> Path:
    """The JSON file beside a split CSV recording its seed, counts and exclusions."""
    return split_csv.with_suffix(".json")


def write_split(result: SplitResult, split_csv: str | os.PathLike, seed: int,
                audit_result: AuditResult,
                fractions: dict[str, float] = SPLIT_FRACTIONS, metadata_only: bool = False,
                ) -> None:
    """Write the split CSV, its metadata JSON and its files' sizes and times as the audit saw
    them (a file changed since it was hashed is then found by every reader), each
    atomically; ``metadata_only`` keeps the CSV (a reused split whose images may have moved)."""
    split_csv, data_root = Path(split_csv), audit_result.data_root
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "seed": seed,
        "fractions": fractions,
        **integrity.data_root_record(data_root, split_csv),
        "counts": split_counts(result.split).to_dict(orient="index"),
        "excluded": result.excluded.to_dict(orient="records"),
    }
    if not metadata_only:
        files.write_text_atomically(result.split.to_csv(index=False, lineterminator="\n"),
                                    split_csv)
    files.write_json(metadata, metadata_path(split_csv))
    # Last: until it is written, the old record makes every reader hash the changed files.
    status = audit_result.index.set_index("path").loc[result.split["path"], ["bytes", "mtime_ns"]]
    integrity.write_status(status.reset_index()[integrity.STATUS_COLUMNS], split_csv)


def read_split(split_csv: str | os.PathLike) -> pd.DataFrame:
    """Read a split CSV, checking its columns and split names."""
    try:
        split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise StaleSplitError(
            f"{split_csv} is empty or not a CSV ({error}). {REMAKE_SPLIT}") from None
    if list(split.columns) != SPLIT_COLUMNS:
        raise StaleSplitError(
            f"{split_csv} has columns {list(split.columns)}, expected {SPLIT_COLUMNS}. "
            f"{REMAKE_SPLIT}")
    unknown = set(split["split"]) - set(SPLIT_NAMES)
    if unknown:
        raise StaleSplitError(f"{split_csv} has unknown split names {sorted(unknown)}. "
                              f"{REMAKE_SPLIT}")
    for column, what in [("path", "file"), ("sha256", "content")]:
        repeated = split.loc[split[column].duplicated(), column]
        if len(repeated):
            raise StaleSplitError(
                f"{split_csv} lists the same {what} in {len(repeated)} more row(s) than once "
                f"(e.g. {repeated.iloc[0]}): an image would count twice, or sit in two "
                f"subsets. {REMAKE_SPLIT}")
    return split


def subset_rows(split: pd.DataFrame, subset: str) -> pd.DataFrame:
    """The rows of ``subset`` in path order (every reader's order); DataError when none."""
    rows = split[split["split"] == subset].sort_values("path")
    if rows.empty:
        raise DataError(f"The split has no images in subset {subset!r}.")
    return rows


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows, in CLASS_NAMES order) and split (columns), with totals."""
    counts = pd.crosstab(split["label"], split["split"])
    counts = counts.reindex(index=list(CLASS_NAMES), columns=list(SPLIT_NAMES), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    return counts.astype(int)


def _differences(saved: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Describe how the images in a saved split differ from those on disk now."""
    saved_rows = saved.set_index("path")[["label", "sha256"]]
    current_rows = current.set_index("path")[["label", "sha256"]]
    missing = saved_rows.index.difference(current_rows.index)
    new = current_rows.index.difference(saved_rows.index)
    common = saved_rows.index.intersection(current_rows.index)
    changed = common[(saved_rows.loc[common] != current_rows.loc[common]).any(axis=1)]
    notes = []
    for what, paths in [("no longer on disk (or no longer usable)", missing),
                        ("new on disk", new), ("changed content or class", changed)]:
        if len(paths):
            examples = ", ".join(list(paths[:3]))
            notes.append(f"{len(paths)} image(s) {what}, e.g. {examples}")
    return notes


def _saved_metadata(split_csv: Path) -> dict:
    """The metadata beside a split (its seed, fractions...), or {} when missing or damaged."""
    try:
        metadata = files.read_json(metadata_path(split_csv))
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def make_split(audit_result: AuditResult, split_csv: str | os.PathLike,
               seed: int = DEFAULT_SEED, force: bool = False,
               fractions: dict[str, float] = SPLIT_FRACTIONS) -> SplitResult:
    """Create the split, or reuse the saved one at ``split_csv`` if it still fits the data.

    Reused only with exactly the images the audit selects now, the same seed and fractions;
    else StaleSplitError says what changed, unless ``force`` makes a new split over it.
    """
    split_csv = Path(split_csv)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"The split's seed must be a whole number of 0 or more, got {seed!r}.")
    fractions = check_fractions(fractions)
    if not usable_mask(audit_result.index).any():
        excluded = select_images(audit_result.index)[1]
        raise no_usable_image(audit_result.data_root, list(zip(excluded["path"],
                                                               excluded["reason"], strict=True)))
    images, excluded = select_images(audit_result.index)
    if split_csv.exists() and not force:
        saved = read_split(split_csv)
        problems = _differences(saved, images)
        recorded = _saved_metadata(split_csv)
        saved_seed = recorded.get("seed")
        if isinstance(saved_seed, bool) or not isinstance(saved_seed, int):
            problems.append(f"its metadata {metadata_path(split_csv)} is missing, damaged or "
                            "has no seed")
        elif saved_seed != seed:
            problems.append(f"it was made with seed {saved_seed}, this run asks for seed {seed}")
        saved_fractions = recorded.get("fractions")
        if saved_fractions != fractions:
            problems.append(f"it was made with fractions {saved_fractions}, this run asks for "
                            f"{fractions}")
        if problems:
            raise StaleSplitError(
                f"The saved split {split_csv} does not match the data in "
                f"{audit_result.data_root}:\n  - " + "\n  - ".join(problems) + f"\n{REMAKE_SPLIT}")
        reused = SplitResult(split=saved, excluded=excluded, reused=True)
        # The same images, perhaps in a folder that moved: record where they are now.
        write_split(reused, split_csv, seed, audit_result, fractions, metadata_only=True)
        return reused
    result = SplitResult(split=assign_splits(images, seed, fractions), excluded=excluded)
    write_split(result, split_csv, seed, audit_result, fractions)
    empty = [name for name in SPLIT_NAMES if not (result.split["split"] == name).any()]
    if empty:  # a split of a few images per class; training and scoring will refuse it
        print(f"Warning: the split has no {' and no '.join(empty)} images ({len(images)} "
              "usable images): training and scoring need every subset. Give more images "
              "per class, or other SPLIT_FRACTIONS.")
    return result
