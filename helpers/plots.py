"""Figures of the study, each saved as PNG in the run folder and returned for the notebooks."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from helpers import files, metrics


def finish(figure: plt.Figure, path: str | os.PathLike | None) -> plt.Figure:
    """Lay ``figure`` out and save it as PNG at ``path`` (creating its folder) when a path is
    given; returns it."""
    figure.tight_layout()
    if path is not None:
        with files.atomic_output(path, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=120, bbox_inches="tight")
    return figure


def plot_training_curves(histories: dict[str, pd.DataFrame],
                         phase_boundaries: dict[str, int] | None = None,
                         path: str | os.PathLike | None = None,
                         title: str | None = None) -> plt.Figure:
    """Loss, accuracy (training dashed, validation solid) and learning rate per epoch.

    ``phase_boundaries`` maps a label to the epoch where the base was unfrozen, drawn as a line.
    """
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (label, history), color in zip(histories.items(), plt.cm.tab10.colors, strict=False):
        epochs = history["epoch"] + 1
        for axis, metric in zip(axes[:2], ["loss", "accuracy"], strict=True):
            axis.plot(epochs, history[metric], "--", color=color, alpha=0.6)
            axis.plot(epochs, history[f"val_{metric}"], "-", color=color, label=label)
        if "learning_rate" in history:
            axes[2].plot(epochs, history["learning_rate"], color=color, label=label)
        boundary = (phase_boundaries or {}).get(label)
        if boundary is not None:
            for axis in axes:
                axis.axvline(boundary + 0.5, color=color, linestyle=":", alpha=0.8)
    axes[0].set(title="Loss (dashed: training, solid: validation)", xlabel="epoch",
                yscale="log")
    axes[1].set(title="Accuracy (dashed: training, solid: validation)", xlabel="epoch",
                ylim=(0, 1.01))
    axes[2].set(title="Learning rate (at each epoch's last step)", xlabel="epoch")
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(loc="lower right", fontsize="small")
    if title:
        figure.suptitle(title)
    return finish(figure, path)


def plot_batchnorm_probe(table: pd.DataFrame, path: str | os.PathLike | None = None
                         ) -> plt.Figure:
    """Training accuracy and the two validation accuracies of the same weights per epoch
    (``histories.batchnorm_probe_table``), with the share of statistics absorbed."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for column, style in [("training accuracy", "--"),
                          ("val_accuracy (moving averages)", "-o"),
                          ("val_accuracy (recomputed statistics)", "-s")]:
        axis.plot(table.index, table[column], style, label=column)
    axis.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02),
             title="Same weights, two sets of BatchNorm statistics")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for epoch, share in table["share absorbed"].items():
        axis.annotate(f"{share:.0%}", (epoch, 0.02), ha="center", fontsize=8, color="gray")
    axis.text(0.01, 0.08, "grey: share of the statistics the moving averages absorbed",
              transform=axis.transAxes, fontsize=8, color="gray")
    axis.legend(loc="center right", fontsize=8)
    return finish(figure, path)


def plot_confusion_matrices(reports: dict[str, dict], normalized: bool = True,
                            path: str | os.PathLike | None = None) -> plt.Figure:
    """One heat map per model (rows: true class, columns: predicted), side by side; cells
    show row shares when ``normalized``, counts otherwise."""
    figure, axes = plt.subplots(1, len(reports), figsize=(6.5 * len(reports), 5.5),
                                squeeze=False)
    for axis, (label, report) in zip(axes[0], reports.items(), strict=True):
        key = "confusion_matrix_normalized" if normalized else "confusion_matrix"
        matrix = pd.DataFrame(report[key], index=report["class_names"],
                              columns=report["class_names"])
        sns.heatmap(matrix, annot=True, fmt=".2f" if normalized else "d", cmap="Blues",
                    vmin=0, vmax=1 if normalized else None, cbar=False, ax=axis,
                    annot_kws={"fontsize": 8})
        axis.set(title=f"{label} (accuracy {report['accuracy']:.3f})", xlabel="predicted",
                 ylabel="true")
    return finish(figure, path)


def plot_per_class_f1(reports: dict[str, dict],
                      path: str | os.PathLike | None = None) -> plt.Figure:
    """Per-class F1 of each model as grouped bars."""
    rows = [{"class": name, "model": label, "F1": scores["f1"]}
            for label, report in reports.items()
            for name, scores in report["per_class"].items()]
    figure, axis = plt.subplots(figsize=(10, 4))
    sns.barplot(pd.DataFrame(rows), x="class", y="F1", hue="model", ax=axis)
    # Zoomed to the bars, so close models stay apart; the label says where the axis starts.
    bottom = max(0.0, min(row["F1"] for row in rows) - 0.05)
    axis.set(ylim=(bottom, 1.0), title="F1 per class", xlabel="",
             ylabel=f"F1 (axis from {bottom:.2f})" if bottom > 0 else "F1")
    axis.legend(loc="lower right", fontsize="small")
    return finish(figure, path)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                     path: str | os.PathLike | None = None) -> plt.Figure:
    """Reliability diagrams (accuracy against confidence per bin, ECE in the legend) of
    ``curves``: label -> (y_true, probabilities)."""
    figure, axis = plt.subplots(figsize=(5.5, 5.5))
    axis.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    for label, (y_true, probabilities) in curves.items():
        table = metrics.reliability_table(y_true, probabilities)
        filled = table["count"] > 0
        ece = metrics.expected_calibration_error(y_true, probabilities)
        axis.plot(table["confidence"][filled], table["accuracy"][filled], "o-",
                  label=f"{label} (ECE {ece:.3f})")
    axis.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1.01),
             ylim=(0, 1.01), title=f"Reliability ({metrics.ECE_BINS} bins)")
    axis.legend(loc="upper left", fontsize="small")
    return finish(figure, path)


def plot_roc_curves(y_true: np.ndarray, probabilities: dict[str, np.ndarray],
                    class_names: tuple[str, ...],
                    path: str | os.PathLike | None = None) -> plt.Figure:
    """One-vs-rest ROC curve per class, one panel per model, AUC in the legend."""
    figure, axes = plt.subplots(1, len(probabilities), figsize=(6 * len(probabilities), 5),
                                squeeze=False)
    for axis, (label, scores) in zip(axes[0], probabilities.items(), strict=True):
        for index, name in enumerate(class_names):
            positives = np.asarray(y_true) == index
            if positives.all() or not positives.any():
                continue  # a curve needs both positives and negatives
            false_positive_rate, true_positive_rate, _ = roc_curve(positives, scores[:, index])
            area = roc_auc_score(positives, scores[:, index])
            axis.plot(false_positive_rate, true_positive_rate, label=f"{name} ({area:.4f})")
        axis.plot([0, 1], [0, 1], color="gray", linestyle=":")
        axis.set(title=f"ROC, one vs rest: {label}", xlabel="false positive rate",
                 ylabel="true positive rate")
        axis.legend(loc="lower right", fontsize="small")
    return finish(figure, path)


def show_images(images: list[np.ndarray], titles: list[str], columns: int = 6,
                overlays: list[np.ndarray] | None = None, suptitle: str | None = None,
                path: str | os.PathLike | None = None) -> plt.Figure:
    """A grid of RGB images with titles; ``overlays`` (heat maps in [0, 1]) drawn on top."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index, (axis, image, title) in enumerate(zip(axes.flat, images, titles, strict=False)):
        axis.imshow(np.asarray(image).astype("uint8"))
        if overlays is not None:
            axis.imshow(overlays[index], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.set_title(title, fontsize=8)
    if suptitle:
        figure.suptitle(suptitle)
    return finish(figure, path)


def confident_mistakes(predictions: pd.DataFrame, count: int = 12) -> pd.DataFrame:
    """The ``count`` wrong predictions with the highest confidence (a predictions frame)."""
    wrong = predictions[predictions["label"] != predictions["predicted"]]
    return wrong.sort_values("confidence", ascending=False).head(count)


def plot_class_counts(counts: pd.DataFrame,
                      path: str | os.PathLike | None = None) -> plt.Figure:
    """Stacked bars of images per class and split (``helpers.split.split_counts``)."""
    table = counts.drop(index="total", columns="total", errors="ignore")
    figure, axis = plt.subplots(figsize=(9, 4))
    table.plot.bar(stacked=True, ax=axis, rot=0)
    axis.set(title="Images per class and split", xlabel="", ylabel="images")
    return finish(figure, path)


def plot_generalization_gap(histories: dict[str, pd.DataFrame],
                            path: str | os.PathLike | None = None) -> plt.Figure:
    """Training minus validation accuracy per epoch, one line per run."""
    figure, axis = plt.subplots(figsize=(8, 4))
    for label, history in histories.items():
        axis.plot(history["epoch"] + 1, history["accuracy"] - history["val_accuracy"],
                  marker=".", label=label)
    axis.axhline(0, color="gray", linestyle=":")
    axis.set(title="Generalization gap (training - validation accuracy)", xlabel="epoch",
             ylabel="accuracy gap")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize="small")
    return finish(figure, path)
