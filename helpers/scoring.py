"""Score a saved model: on a subset of a run's split (``predict_split``), or on the images of
a labelled folder the audit keeps (``labelled_images``; ``python -m helpers.evaluate``).
Predictions are one CSV row per image; ``report_from_predictions`` makes the metrics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import audit, files, inference, metrics, split
from helpers.errors import DataError
from helpers.locate import class_folders, find_data_root
from helpers.runfolder import RunFolder


def labelled_images(data_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[dict], Path]:
    """The images under ``data_dir``'s class folders that the audit keeps, and every file
    left out, judged as the split judges a folder (``split.select_images``): unusable files,
    a copy of a kept image (the same decoded pixels: "duplicate of ...", scored once), and content
    under two classes (its label is unknown: every copy left out).

    Returns (DataFrame with path (absolute), label, sha256; skipped files as {path, reason};
    the folder holding the class folders). Raises DataError when no folder names a class
    or no image is usable.
    """
    data_dir = Path(data_dir)
    root = data_dir if data_dir.is_dir() and class_folders(data_dir) else find_data_root(data_dir)
    result = audit.audit(root)
    index = result.index
    usable = audit.usable_mask(index)
    skipped = []
    for row in index[~usable].itertuples():
        if row.label:
            reason = row.problem
        elif row.folder:
            reason = f"folder {row.folder!r} names no class"
        else:
            reason = "outside the class folders"
        skipped.append({"path": row.path, "reason": reason})
    kept, excluded = split.select_images(index)
    judged = excluded[excluded["path"].isin(index.loc[usable, "path"])]  # copies, conflicts
    skipped += [{"path": row.path, "reason": row.reason} for row in judged.itertuples()]
    if kept.empty:
        raise split.no_usable_image(root, [(item["path"], item["reason"]) for item in skipped])
    images = kept[["path", "label", "sha256"]].reset_index(drop=True)
    images["path"] = [str(root / path) for path in images["path"]]
    return images, skipped, root


def predictions_frame(paths: list[str], labels: list[str], probabilities: np.ndarray,
                      class_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per image: path, true label, predicted label, confidence, p_<class>..."""
    frame = pd.DataFrame({"path": paths, "label": labels})
    frame["predicted"] = [class_names[i] for i in probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1)
    for i, name in enumerate(class_names):
        frame[f"p_{name}"] = probabilities[:, i]
    return frame


def probabilities_of(frame: pd.DataFrame, class_names: tuple[str, ...]) -> np.ndarray:
    """The ``[n_images, n_classes]`` probabilities stored in a predictions frame."""
    return frame[[f"p_{name}" for name in class_names]].to_numpy(dtype=np.float64)


def true_indices(frame: pd.DataFrame, class_names: tuple[str, ...]) -> np.ndarray:
    """Class index of each row's true label; DataError for a label the model does not know."""
    unknown = sorted(set(frame["label"]) - set(class_names))
    if unknown:
        raise DataError(f"Labels the model does not know: {unknown}")
    return frame["label"].map(class_names.index).to_numpy()


def report_from_predictions(frame: pd.DataFrame, class_names: tuple[str, ...],
                            n_resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
    """Full metrics with bootstrap intervals and calibration error of a predictions frame."""
    y_true = true_indices(frame, class_names)
    probabilities = probabilities_of(frame, class_names)
    report = metrics.classification_metrics(y_true, probabilities, class_names)
    metrics.with_intervals(report, y_true, probabilities.argmax(axis=1), n_resamples)
    report["ece"] = metrics.expected_calibration_error(y_true, probabilities)
    return report


def predict_split(run: RunFolder, model_name: str, subset: str,
                  loaded: inference.LoadedModel, tta: bool = False) -> pd.DataFrame:
    """Predict one subset of a run folder's split with ``loaded``, the model MODEL_NAME.

    Saves and returns the predictions (``run.predictions``; rows in split order).
    """
    split_frame, data_root = run.load_split()
    rows = split.subset_rows(split_frame, subset)
    paths = [str(data_root / path) for path in rows["path"]]
    probabilities = inference.predict_probabilities(loaded, paths, tta=tta)
    frame = predictions_frame(list(rows["path"]), list(rows["label"]), probabilities,
                              loaded.class_names)
    out = run.predictions(model_name, subset, tta)
    files.write_text_atomically(frame.to_csv(index=False), out)
    return frame
