"""Exploratory views of a prepared run folder: samples and colour statistics per class.

Counts per split are ``helpers.split.split_counts``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers.labels import CLASS_NAMES


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as a uint8 RGB array (grayscale and alpha converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def sample_paths(split_frame: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """``per_class`` random rows of each class (fewer when a class has fewer images)."""
    groups = dict(tuple(split_frame.groupby("label")))
    return pd.concat([groups[label].sample(min(per_class, len(groups[label])), random_state=seed)
                      for label in CLASS_NAMES if label in groups], ignore_index=True)


def colour_statistics(split_frame: pd.DataFrame, data_root: str | os.PathLike,
                      per_class: int = 200, seed: int = 0) -> pd.DataFrame:
    """Mean and standard deviation of R, G, B (0-255) per class, from a sample of images."""
    rows = []
    for row in sample_paths(split_frame, per_class, seed).itertuples():
        pixels = load_image(Path(data_root) / row.path).reshape(-1, 3).astype(np.float64)
        rows.append({"label": row.label, **{f"mean_{c}": v for c, v in zip(
            "RGB", pixels.mean(axis=0), strict=True)}, **{f"std_{c}": v for c, v in zip(
                "RGB", pixels.std(axis=0), strict=True)}})
    statistics = pd.DataFrame(rows).groupby("label").mean().round(1)
    statistics["images"] = pd.DataFrame(rows).groupby("label").size()
    return statistics.reindex([label for label in CLASS_NAMES if label in statistics.index])
