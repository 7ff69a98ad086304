"""Figures of the study, each saved as PNG in the run folder and returned for the notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd


def save_figure(figure: plt.Figure, path: str | os.PathLike | None) -> None:
    """Save ``figure`` as PNG at ``path`` (creating its folder) when a path is given."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_training_curves(histories: dict[str, pd.DataFrame],
                         phase_boundaries: dict[str, int] | None = None,
                         path: str | os.PathLike | None = None,
                         title: str | None = None) -> plt.Figure:
    """Loss, accuracy (training dashed, validation solid) and learning rate per epoch.

    ``histories`` maps a label to a history CSV's DataFrame (``history/NAME.csv``);
    ``phase_boundaries`` maps a label to the epoch where fine-tuning began, drawn as a line.
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
    axes[1].legend(loc="lower right", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
    return figure
