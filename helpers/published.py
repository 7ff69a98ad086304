"""Published accuracies on the PBC images and BloodMNIST, each checked against its source, to
place this run's figures among; splits differ (``SPLITS_DIFFER``), so it does not rank them.
"""

from __future__ import annotations

import pandas as pd

RESOLUTIONS = (28, 64, 128, 224)  # BloodMNIST's sizes (MedMNIST+)

MEDMNIST_PLUS = "MedMNIST+ [1], BloodMNIST"
# BENCHMARK.md of sdoerrich97/rethinking-model-prototyping-MedMNISTPlus (its BloodMNIST
# figure, ACC): timm ImageNet weights, AdamW at 1e-4 with cosine decay, best epoch on
# validation loss; images under 224 px zero-padded to 224 (after normalisation).
PUBLISHED = [
    (MEDMNIST_PLUS, "VGG16", "ImageNet, all layers fine-tuned", (94.85, 98.20, 98.52, 98.77)),
    (MEDMNIST_PLUS, "ResNet-18", "ImageNet, all layers fine-tuned", (91.93, 97.06, 98.34, 98.94)),
    (MEDMNIST_PLUS, "DenseNet-121", "ImageNet, all layers fine-tuned",
     (93.87, 97.99, 98.90, 99.02)),
    (MEDMNIST_PLUS, "ViT-B/16", "ImageNet, all layers fine-tuned", (90.59, 96.42, 97.54, 98.43)),
    (MEDMNIST_PLUS, "ResNet-18", "ImageNet, frozen, linear head", (63.40, 67.15, 80.58, 91.10)),
]
# Figures on the PBC originals (360x363 px, each network at its own input size).
ORIGINALS = [
    ("Gavas & Olpadkar [2], PBC", "ensemble of the best of 27 CNNs",
     "ImageNet, fine-tuned", 99.51),
    ("Acevedo et al. [3], PBC", "VGG-16 features + SVM",
     "ImageNet, frozen", 86.0),
    ("Acevedo et al. [3], PBC", "Inception v3 features + SVM",
     "ImageNet, frozen", 90.0),
]
CITATIONS = (
    "[1] Doerrich et al., Rethinking model prototyping through the MedMNIST+ dataset "
    "collection, Scientific Reports 2025 (arXiv 2404.15786): test accuracy, mean of 3 seeds.\n"
    "[2] Gavas & Olpadkar, Deep CNNs for peripheral blood cell classification, arXiv "
    "2110.09508 (2021).\n"
    "[3] Acevedo et al., Recognition of peripheral blood cell images using convolutional "
    "neural networks, Computer Methods and Programs in Biomedicine 180 (2019) 105020.")
SPLITS_DIFFER = (
    "Their splits and inputs differ from ours: BloodMNIST is the PBC images centre-cropped "
    "and resized, split 11,959 / 1,712 / 3,421 (about 70/10/20) by MedMNIST; MedMNIST+ pads "
    "images under 224 px to 224, so its 64 px column is 64 px of detail at 224 px of "
    "compute; the papers on the originals use their own splits. None of them is this kit's "
    "split, so a figure here places ours, it does not rank it.")
COLUMNS = ["source", "model", "weights, training", *(f"{size} px" for size in RESOLUTIONS),
           "originals"]


def published_table() -> pd.DataFrame:
    """The published figures (test accuracy, %), one row per model; a column per BloodMNIST
    resolution, and "originals" for figures on the 360x363 px images."""
    rows = [[source, model, training, *accuracies, float("nan")]
            for source, model, training, accuracies in PUBLISHED]
    rows += [[source, model, training, *(float("nan"),) * len(RESOLUTIONS), accuracy]
             for source, model, training, accuracy in ORIGINALS]
    return pd.DataFrame(rows, columns=COLUMNS)


def with_this_run(rows: dict[str, tuple[str, int, float]]) -> pd.DataFrame:
    """``published_table`` with this run's models first: label -> (weights, input px,
    accuracy share). Another size goes to the nearest column below, named in the cell."""
    own = []
    for label, (weights, size, accuracy) in rows.items():
        column = max((candidate for candidate in RESOLUTIONS if candidate <= size),
                     default=RESOLUTIONS[0])
        cells = dict.fromkeys(COLUMNS, float("nan"))
        cells.update({"source": "this run (its own split)",
                      "model": label if size == column else f"{label} ({size} px)",
                      "weights, training": weights, f"{column} px": round(100 * accuracy, 2)})
        own.append(cells)
    return pd.concat([pd.DataFrame(own, columns=COLUMNS), published_table()],
                     ignore_index=True)


def table_text(table: pd.DataFrame) -> str:
    """A table of ``with_this_run`` or ``published_table`` as text, empty cells blank."""
    return table.astype(object).where(table.notna(), "").to_string(
        index=False, float_format=lambda value: f"{value:.2f}")
