"""The command line ``python -m helpers.evaluate MODEL DATA_DIR [--out metrics.json] [--tta]``.

DATA_DIR is laid out like the download: one folder per class (any case, plural or not).
Every file is checked first; files that are not usable images, and folders that name no
class, are reported with the reason and left out; the rest are scored. The JSON report holds
accuracy, balanced accuracy, macro/weighted F1 with 95% bootstrap intervals, per-class
scores, the confusion matrix, ROC-AUC, log loss, calibration error, and what was skipped.
TensorFlow is imported only once the arguments are accepted, so --help answers at once.
"""

from __future__ import annotations

import argparse
import os

from helpers import files, split
from helpers.tools import command, outputs


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


def evaluate_folder(model_path: str | os.PathLike, data_dir: str | os.PathLike,
                    tta: bool = False, n_resamples: int | None = None) -> dict:
    """Score a saved model on every usable image of a labelled folder (see the module doc).

    With ``tta`` the report holds the plain figures and, under "tta", those with
    test-time augmentation. Raises DataError (or its ModelFileError) for a bad model or
    a folder without a single usable image.
    """
    from helpers import inference, metrics  # TensorFlow: only once the arguments are accepted
    from helpers.scoring import labelled_images, predictions_frame, report_from_predictions

    n_resamples = metrics.BOOTSTRAP_RESAMPLES if n_resamples is None else n_resamples
    loaded = inference.load_model(model_path)
    images, skipped, root = labelled_images(data_dir)
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
    return command.exit_status(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> None:
    from helpers import inference  # TensorFlow: only once the arguments are accepted

    if args.out:
        outputs.check_output_path(args.out, ".json",
                                  [args.model, inference.sidecar_path(args.model)],
                                  input_folders=[args.data_dir])
    report = evaluate_folder(args.model, args.data_dir, tta=args.tta)
    print(format_report(report))
    if args.out:
        files.write_json(report, args.out)
        print(f"\nWrote {files.display_name(args.out)}")
    else:
        print("\n(--out FILE writes the full report as JSON)")
