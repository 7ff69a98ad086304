"""Evaluate a saved model on a folder of labelled images (``predict_split`` scores a run's split).

    python -m helpers.evaluate MODEL DATA_DIR [--out metrics.json] [--tta]

DATA_DIR is laid out like the download: one folder per class (any case, plural or not).
Every file is checked first; files that are not usable images, and folders that name no
class, are reported with the reason and left out; the rest are scored. The JSON report holds
accuracy, balanced accuracy, macro/weighted F1 with 95% bootstrap intervals, per-class
scores, the confusion matrix, ROC-AUC, log loss, calibration error, and what was skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    a byte-identical copy of a kept image ("duplicate of ...", scored once), and content
    under two classes (its label is unknown: every copy left out).

    Returns (DataFrame with path (absolute), label, sha256; skipped files as {path, reason};
    the folder holding the class folders). Raises DataError when no folder names a class.
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


def evaluate_folder(model_path: str | os.PathLike, data_dir: str | os.PathLike,
                    tta: bool = False, n_resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
    """Score a saved model on every usable image of a labelled folder; see the module doc.

    With ``tta`` the report holds the plain figures and, under "tta", those with
    test-time augmentation. Raises DataError (or its ModelFileError) for a bad model or
    a folder without a single usable image.
    """
    loaded = inference.load_model(model_path)
    images, skipped, root = labelled_images(data_dir)
    if images.empty:
        raise DataError(f"No usable image in the class folders under {root} "
                        f"({len(skipped)} file(s) skipped).")
    paths = list(images["path"])
    report = {"model": str(loaded.path), "label": loaded.label, "data_root": str(root),
              "image_size": loaded.image_size, "crop_fraction": loaded.crop_fraction}
    plain = predictions_frame(paths, list(images["label"]),
                              inference.predict_probabilities(loaded, paths),
                              loaded.class_names)
    report.update(report_from_predictions(plain, loaded.class_names, n_resamples))
    if tta:
        augmented = predictions_frame(paths, list(images["label"]),
                                      inference.predict_probabilities(loaded, paths, tta=True),
                                      loaded.class_names)
        report["tta"] = report_from_predictions(augmented, loaded.class_names, n_resamples)
    report["skipped"] = skipped
    return report


def format_report(report: dict) -> str:
    """A readable summary: headline metrics with intervals, per-class table, confusion."""
    def with_ci(name: str, source: dict) -> str:
        low, high = source[f"{name}_ci95"]
        return f"{source[name]:.4f} (95% CI {low:.4f}-{high:.4f})"

    names = report["class_names"]
    reasons = [item["reason"] for item in report["skipped"]]
    copies = sum(reason.startswith(split.DUPLICATE_OF) for reason in reasons)
    conflicts = reasons.count(split.UNDER_TWO_CLASSES)
    judged = (f" (as the audit judges a folder: {copies} duplicate(s) scored once, "
              f"{conflicts} file(s) of content under two classes left out)"
              if copies or conflicts else "")
    lines = [f"{report['label']}: {report['model']}",
             f"Images: {report['n_images']:,} scored, {len(report['skipped'])} skipped{judged}",
             f"Accuracy           {with_ci('accuracy', report)}",
             f"Macro-F1           {with_ci('macro_f1', report)}"
             + (f"  (over the {len(names) - len(report['absent_classes'])} classes present; "
                f"no image of {', '.join(report['absent_classes'])})"
                if report["absent_classes"] else ""),
             f"Balanced accuracy  {report['balanced_accuracy']:.4f}",
             f"Weighted F1        {report['weighted_f1']:.4f}",
             f"Log loss           {report['log_loss']:.4f}   ECE {report['ece']:.4f}"]
    if report["roc_auc_macro_ovr"] is not None:
        lines.append(f"ROC-AUC (OvR)      {report['roc_auc_macro_ovr']:.4f}")
    if "tta" in report:
        lines.append(f"With TTA (x8)      accuracy {with_ci('accuracy', report['tta'])}, "
                     f"macro-F1 {with_ci('macro_f1', report['tta'])}")
    lines += ["", f"  {'class':<13}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    for name, row in report["per_class"].items():
        lines.append(f"  {name:<13}{row['precision']:>10.3f}{row['recall']:>8.3f}"
                     f"{row['f1']:>8.3f}{row['support']:>9,}")
    short = [name[:5] for name in names]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)",
              "  " + " " * 13 + "".join(f"{name:>7}" for name in short)]
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"  {name:<13}" + "".join(f"{count:>7,}" for count in row))
    if report["skipped"]:
        lines += ["", f"Skipped ({len(report['skipped'])}):"]
        lines += [f"  {files.terminal_text(item['path'])}: "
                  f"{files.terminal_text(item['reason'])}" for item in report["skipped"][:20]]
        if len(report["skipped"]) > 20:
            lines.append(f"  ... and {len(report['skipped']) - 20} more (see the JSON)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file saved by a training notebook"
                        " (NAME.json beside)")
    parser.add_argument("data_dir", help="folder with one sub-folder of images per class")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--tta", action="store_true",
                        help="also report test-time augmentation (8 flips/rotations)")
    args = parser.parse_args(argv)
    try:
        if args.out:
            files.check_output_path(args.out, [args.model, inference.sidecar_path(args.model)],
                                    input_folders=[args.data_dir])
        report = evaluate_folder(args.model, args.data_dir, tta=args.tta)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.out:
        try:
            files.write_json(report, args.out)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"\nWrote {files.display_name(args.out)}")
    else:
        print("\n(--out FILE writes the full report as JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

