"""Does a model's answer depend on the resolution its source image was taken at?

Makes half-resolution copies as ``pbc_dev`` was made and scores a model on both versions of
each image. The library of ``python -m helpers.resolution`` and notebook 5's check.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from helpers import files, inference, split
from helpers.errors import DataError
from helpers.runfolder import RunFolder
from helpers.scoring import labelled_images, true_indices
from helpers.split import DUPLICATE_OF

# How pbc_dev was made (../shared/data/README.md): half of each side, LANCZOS, JPEG q90.
HALF_RESOLUTION_FACTOR = 2
HALF_RESOLUTION_QUALITY = 90


def half_resolution_bytes(source: str | os.PathLike) -> bytes:
    """The JPEG bytes of ``source`` at half its width and height, as pbc_dev was made."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        # Python's rounding, as pbc_dev was made: 363 px became 182, 369 px 184.
        size = (max(1, round(image.width / HALF_RESOLUTION_FACTOR)),
                max(1, round(image.height / HALF_RESOLUTION_FACTOR)))
        half = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    half.save(buffer, "JPEG", quality=HALF_RESOLUTION_QUALITY)
    return buffer.getvalue()


def half_resolution_copies(paths: list[str], folder: str | os.PathLike) -> list[Path]:
    """Write numbered half-resolution copies of the images into ``folder``; returns them in
    ``paths`` order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for number, path in enumerate(paths):
        copy = folder / f"{number:06d}.jpg"
        with files.atomic_output(copy) as temporary:
            temporary.write_bytes(half_resolution_bytes(path))
        copies.append(copy)
    return copies


def agreement_figures(y_true: np.ndarray, original: np.ndarray, half: np.ndarray) -> dict:
    """Accuracy on the originals and the half-resolution copies, and how often they agree."""
    original_class, half_class = original.argmax(axis=1), half.argmax(axis=1)
    return {"n_images": int(len(y_true)),
            "accuracy_original": float(np.mean(original_class == y_true)),
            "accuracy_half": float(np.mean(half_class == y_true)),
            "agreement": float(np.mean(original_class == half_class)),
            "changed": int(np.sum(original_class != half_class))}


def split_of_images(images: pd.DataFrame, split: pd.DataFrame,
                    excluded: list[dict] = ()) -> pd.Series:
    """The subset each image has in a run's split, or "not in the split".

    Matched by class and file name (an original has its half-resolution copy's name) or by
    content. A duplicate the split left out has the subset of the copy it kept.
    """
    def key(label: str, path: str) -> tuple[str, str]:
        return label, PurePosixPath(path).name

    by_name = {key(label, path): subset for label, path, subset
               in zip(split["label"], split["path"], split["split"], strict=True)}
    by_path = dict(zip(split["path"], split["split"], strict=True))
    for entry in excluded:
        twin = entry["reason"].removeprefix(DUPLICATE_OF)
        if twin != entry["reason"] and twin in by_path:
            by_name[key(entry["label"], entry["path"])] = by_path[twin]
    by_content = dict(zip(split["sha256"], split["split"], strict=True))
    subsets = [by_name.get(key(label, Path(path).as_posix())) or by_content.get(
                   sha256, "not in the split")
               for label, path, sha256 in zip(images["label"], images["path"],
                                              images["sha256"], strict=True)]
    return pd.Series(subsets, index=images.index, name="split")


def median_size(paths: list[str | os.PathLike]) -> str:
    """The median width x height of image files, read from their headers."""
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    width, height = np.median(np.array(sizes), axis=0)
    return f"{width:.0f}x{height:.0f}"


def resolution_check(models: list[inference.LoadedModel], images: pd.DataFrame,
                     root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Score each model on ``images`` and on half-resolution copies of them.

    One row per model and group: "all images", and "not trained on" where the split column
    marks some as "train". ``file`` is relative to ``root`` when inside it, so a moved run
    folder's table stays true.
    """
    if images.empty:
        raise DataError("No images to check.")
    paths = list(images["path"])
    groups = {"all images": np.ones(len(images), dtype=bool)}
    if "split" in images and (images["split"] == "train").any():
        groups["not trained on"] = (images["split"] != "train").to_numpy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="half-resolution-") as folder:
        halves = half_resolution_copies(paths, folder)
        sizes = {"original": median_size(paths), "half": median_size(halves)}
        for loaded in models:
            y_true = true_indices(images, loaded.class_names)
            original = inference.predict_probabilities(loaded, paths, progress=False)
            half = inference.predict_probabilities(loaded, halves, progress=False)
            for group, mask in groups.items():
                if mask.any():
                    rows.append({"model": loaded.label, "file": _shown_path(loaded.path, root),
                                 "images": group,
                                 **sizes,
                                 **agreement_figures(y_true[mask], original[mask], half[mask])})
    return pd.DataFrame(rows)


def _shown_path(path: Path, root: str | os.PathLike | None) -> str:
    path = Path(path)
    if root is not None and path.resolve().is_relative_to(Path(root).resolve()):
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    return str(path)


def labelled_folder(data_dir: str | os.PathLike, run: RunFolder | None = None) -> pd.DataFrame:
    """The usable images of a folder of class folders, with each one's subset in ``run``'s
    split when given; DataError when there is no usable image."""
    images, skipped, root = labelled_images(data_dir)
    if run is not None:
        split_frame, _ = run.load_split()
        excluded = files.read_json(run.split_metadata)["excluded"]
        images["split"] = split_of_images(images, split_frame, excluded)
    return images[[column for column in ("path", "label", "split") if column in images]]


def images_to_check(folder: str | os.PathLike | None, run: RunFolder) -> pd.DataFrame:
    """The images notebook 5 checks: those of ``folder``, else the run's test split."""
    if folder:
        return labelled_folder(folder, run)
    split_frame, data_root = run.load_split()
    test = split.subset_rows(split_frame, "test")
    return pd.DataFrame({"path": [str(data_root / path) for path in test["path"]],
                         "label": test["label"].to_numpy(), "split": "test"})
